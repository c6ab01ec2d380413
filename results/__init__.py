"""Results: experiment directory → pandas → accuracy-versus-ε frontiers → tables and plots."""

from results.frontier import pareto_front

__all__ = ["pareto_front"]
