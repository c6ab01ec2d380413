"""The quickstart: what accuracy does the Fashion-MNIST recipe reach at ε = 1, 2, 4 and 8?

The quickstart (the README's first command): each trial draws its own target ε, so the search
traces an accuracy-versus-ε frontier; Optuna then optimises accuracy and ε together
(multi-objective). Trials take ~10-30 s on 2 CPU cores, the default 8 trials ~3 minutes
(docs/benchmarks.md, "Quickstart search").
"""

from spaces import fmnist_quick
from spaces.distributions import Choice
from spaces.registry import SearchSpace, register_space

# The quickstart's recipe, with ε searched instead of fixed.
_QUICK = fmnist_quick.SPACE

register_space(
    SearchSpace(
        name="fmnist_frontier",
        description=(
            "Quickstart: accuracy vs ε on Fashion-MNIST, each trial at ε ∈ {1, 2, 4, 8} (CPU)."
        ),
        fixed={k: v for k, v in _QUICK.fixed.items() if k != "target_epsilon"},
        searched={
            "target_epsilon": Choice(values=(1.0, 2.0, 4.0, 8.0), default=8.0),
            **_QUICK.searched,
        },
    )
)
