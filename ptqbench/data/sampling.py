"""The one seeded sampler behind every calibration draw and evaluation subset.

Records store the image ids a run used, and cache keys hash them, so the draw is part of the
results: the same (n, k, seed) must give the same indices on every machine and in every release.
torch's CPU `randperm` with a seeded generator is that draw.
"""

from __future__ import annotations

import torch


def seeded_subset(n: int, k: int, seed: int, *, sort: bool = True) -> list[int]:
    """`k` distinct indices of `range(n)`: the first `k` of a `seed`-seeded random permutation.

    `sort=True` returns them ascending (an evaluation subset read in file order); `sort=False`
    keeps the draw order (a calibration batch, whose image order is part of the batch)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} of {n} indices; use 0 <= k <= n")
    drawn = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:k].tolist()
    return sorted(drawn) if sort else drawn
