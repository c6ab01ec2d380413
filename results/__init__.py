"""Results: experiment directory → pandas → accuracy-versus-ε frontiers → tables and plots."""
