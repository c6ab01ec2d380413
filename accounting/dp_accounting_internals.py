"""The only module that touches private dp_accounting names; everything else uses its public API.

dp_accounting's public API accounts `DpEvent`s. Two things this project needs are not events,
so it calls two private helpers of `dp_accounting.rdp.rdp_privacy_accountant`:

- `_compute_rdp_repeat_and_select(orders, rdp, mean, shape)`: Papernot & Steinke's
  random-stopping theorem (ICLR 2022, arXiv 2110.03620, Theorems 2 and 6) applied to an RDP
  curve. The public path, `RdpAccountant().compose(RepeatAndSelectDpEvent(event, mean, shape))`,
  takes one `DpEvent`; a random search over several candidate mechanisms needs the theorem
  applied to the pointwise maximum of their curves (and, under parallel composition, to each
  part's maximum), which no `DpEvent` expresses.
- `_gamma_truncated_negative_binomial(shape, mean)`: the halting probability γ of the
  truncated negative binomial with mean E[K], the parameter the accountant itself uses for
  `RepeatAndSelectDpEvent`. The public API takes the mean and never exposes γ, but drawing
  the number of trials K needs it, and drawing K from exactly the distribution that was
  accounted needs the very γ the accountant computed.

An accountant's curve and its orders are read through the public `RdpAccountant.rdp` and
`RdpAccountant.orders` properties (public since at least 0.4.4), not its `_rdp`/`_orders`.

Checked against dp_accounting 0.6.0 (the pinned range in pyproject.toml, `>=0.6,<0.7`); the
code of both private functions is identical in 0.4.4, 0.5.0 and 0.6.0 (docstrings aside).
tests/accounting/test_dp_accounting_internals.py pins their signatures and checks each wrapper
against a public path or a closed form: a new dp_accounting that changes them fails there,
loudly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as _rdp_lib

from accounting.mechanism import quiet_dp_accounting

TINY_RDP = 1e-15
"""The least positive RDP passed to dp_accounting's repeat-and-select (exp(-r) < 1 above it)."""


def repeat_and_select_rdp(
    orders: Sequence[float] | np.ndarray,
    rdp: Sequence[float] | np.ndarray,
    *,
    mean: float,
    shape: float,
) -> np.ndarray:
    """The RDP curve of running a mechanism whose curve is `rdp` (at `orders`) K times and
    releasing only the best run, K random with mean `mean` and shape `shape` (∞ Poisson,
    1 geometric, 0 logarithmic, else truncated negative binomial η): what the accountant
    computes for `RepeatAndSelectDpEvent`, for any curve rather than one event's."""
    orders = np.asarray(orders, dtype=np.float64)
    rdp = np.asarray(rdp, dtype=np.float64)
    # NOTE: dp_accounting's compute_delta takes log1p(-exp(-r)), which fails for a positive r
    # so small that exp(-r) rounds to 1 (a trial with huge σ: the planner probes σ = 1e9), and
    # reads a slightly negative r (float error of the subsampled Gaussian) as δ = 0. Raising
    # every r below TINY_RDP to it only overstates the loss (never rounds ε down).
    rdp = np.maximum(rdp, TINY_RDP)
    with quiet_dp_accounting():
        selected = _rdp_lib._compute_rdp_repeat_and_select(orders, rdp, float(mean), float(shape))
    return np.asarray(selected, dtype=np.float64)


def truncated_negative_binomial_gamma(*, shape: float, mean: float) -> float:
    """γ ∈ (0, 1] of the truncated negative binomial with shape η = `shape` ≥ 0 and E[K] =
    `mean` ≥ 1 (η = 1 geometric, γ = 1/mean; η = 0 logarithmic), as the accountant takes it
    for `RepeatAndSelectDpEvent` (the conservative end of a 1e-9 relative bisection)."""
    if math.isinf(shape):
        raise ValueError("the Poisson distribution (shape ∞) has no γ parameter.")
    return float(_rdp_lib._gamma_truncated_negative_binomial(float(shape), float(mean)))
