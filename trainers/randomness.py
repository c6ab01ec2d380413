"""Where a trial's randomness comes from: public seeds for what may be replayed, secret seeds
for what the privacy guarantee rests on.

Initialisation and augmentation are seeded from `config.seed` (knowing them reveals nothing
about the data). Poisson sampling, DP-SGD noise and validation noise are the mechanism: anyone
who can replay them can subtract the noise, so by default they are seeded from the operating
system's CSPRNG (`secrets`) and the seeds are never written to any output. Checkpoints (in the
trusted experiment directory) keep the generators' *states*, so a resumed trial continues the
same streams. `reproducible=True` seeds them from `config.seed` instead: a research run, never
a DP release (every output says so).
"""

from __future__ import annotations

import secrets

import torch

from trainers.config import TrainConfig

RESEARCH_RUN = (
    "research run: the noise is reproducible from a known seed (reproducible=true); "
    "not a DP release"
)
"""The label every output of a reproducible run carries."""

# Offsets from `seed` of the mechanism's generators in a reproducible run (kept from earlier
# versions so research runs replay as before).
SAMPLING, NOISE, VALIDATION, CANARIES = 1, 2, 5, 7


def mechanism_generator(config: TrainConfig, stream: int, device=None) -> torch.Generator:
    """A generator for one of the mechanism's random streams (`SAMPLING`, `NOISE`,
    `VALIDATION`, an audit's `CANARIES`): secret unless the run is reproducible."""
    seed = config.seed + stream if config.reproducible else secrets.randbits(63)
    return torch.Generator(device=device or "cpu").manual_seed(seed)
