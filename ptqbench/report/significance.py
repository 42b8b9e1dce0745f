"""Which differences in a table are real: a paired bootstrap over the evaluation images.

Two methods evaluated on the same images are compared image by image (the per-image top-1/top-5
hits each record keeps, `ptqbench.per_image`). One bootstrap replicate draws the images with
replacement, the same draw for every cell of a column (that is the pairing), and, for a cell of
several runs (seeds, calibration draws), also draws its runs with replacement, so the spread
between runs counts too. A difference is significant when its (1 - alpha) percentile interval
excludes zero. With 1,300 images a gap of two or three images is not significant; on 50,000
images a few tenths of a point can be.

Per column and W/A group (`group_marks`): the best value is bold only when it is significantly
better than every other cell; otherwise the best and every cell not separable from it are ties.
The second best is underlined only after a bold best, when it is separated from every cell below
(so never in a group of two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

SEED = 0  # fixed: the same records give the same table

BEST, SECOND, TIE = "best", "second", "tie"


@dataclass
class CellSample:
    """The per-image hits of the runs of one cell: shape (runs, images), one image order."""

    hits: np.ndarray
    mean: float  # the cell's shown mean (percent), for ordering


@dataclass
class CellResult:
    """A cell's bootstrap interval of its own mean, and of its difference to the group's best."""

    low: float
    high: float
    diff: float = 0.0            # best - this cell (percent); 0 for the best itself
    diff_low: float = 0.0
    diff_high: float = 0.0
    mark: str = ""               # BEST, SECOND, TIE or ""


def replicate_means(samples: Sequence[CellSample], n_boot: int, seed: int = SEED,
                    chunk: int = 250) -> np.ndarray:
    """Bootstrap distribution of each cell's mean accuracy (percent), shape (n_boot, cells), with
    images drawn jointly for all cells and runs drawn per cell."""
    n_images = samples[0].hits.shape[1]
    if any(s.hits.shape[1] != n_images for s in samples):
        raise ValueError("cells over different numbers of images cannot be paired")
    rng = np.random.default_rng(seed)
    runs = np.concatenate([s.hits for s in samples]).astype(np.float32).T  # (images, all runs)
    per_run = np.empty((n_boot, runs.shape[1]), dtype=np.float64)
    uniform = np.full(n_images, 1.0 / n_images)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        counts = rng.multinomial(n_images, uniform, size=stop - start).astype(np.float32)
        per_run[start:stop] = counts @ runs / n_images
    out = np.empty((n_boot, len(samples)))
    offset = 0
    for j, s in enumerate(samples):
        r = s.hits.shape[0]
        cols = per_run[:, offset:offset + r]
        if r == 1:
            out[:, j] = cols[:, 0]
        else:  # draw the cell's runs with replacement in each replicate
            pick = rng.integers(0, r, size=(n_boot, r))
            out[:, j] = np.take_along_axis(cols, pick, axis=1).mean(axis=1)
        offset += r
    return 100.0 * out


def _interval(x: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(x, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def group_marks(samples: Sequence[CellSample], alpha: float = 0.05, n_boot: int = 2000, second_best: bool = True,
                seed: int = SEED) -> list[CellResult]:
    """Marks and intervals for the cells of one column and W/A group (see the module docstring)."""
    boot = replicate_means(samples, n_boot, seed)
    results = [CellResult(*_interval(boot[:, j], alpha)) for j in range(len(samples))]
    if len(samples) < 2:
        return results
    order = sorted(range(len(samples)), key=lambda j: -samples[j].mean)
    best = order[0]

    def separated(i: int, j: int) -> bool:  # i significantly above j
        return _interval(boot[:, i] - boot[:, j], alpha)[0] > 0

    for j in order[1:]:
        d = boot[:, best] - boot[:, j]
        results[j].diff = samples[best].mean - samples[j].mean
        results[j].diff_low, results[j].diff_high = _interval(d, alpha)
    tied = [j for j in order[1:] if results[j].diff_low <= 0]
    if tied:
        for j in (best, *tied):
            results[j].mark = TIE
        return results
    results[best].mark = BEST
    if second_best and len(order) > 2:  # a second best is only worth marking above something
        second, below = order[1], order[2:]
        if all(separated(second, j) for j in below):
            results[second].mark = SECOND
    return results


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two paired hit vectors (a cross-check of the bootstrap
    for single runs: the discordant images decide)."""
    from math import comb

    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    p = 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, p)


def pairable(shas: Sequence[Optional[str]]) -> bool:
    """True when every run has per-image results over the same evaluation images."""
    return bool(shas) and all(s is not None for s in shas) and len(set(shas)) == 1
