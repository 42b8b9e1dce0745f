"""Clipping-range search for quantizers: min-max, percentile, and MSE over percentile candidates.

All functions work on a 2-D view `x2d` of shape [groups, samples]: one row per channel for
per-channel quantizers, a single row for per-tensor ones, so one code path serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

RANGE_METHODS = ("minmax", "percentile", "mse")

# torch.sort on one huge row is slow and torch.quantile refuses more than 2**24 elements:
# above this many samples per row, quantiles come from torch.kthvalue instead of a sort.
_KTH_THRESHOLD = 1 << 20
# Elements sorted at once by `quantiles` (64 MB of sort temporaries at most).
_SORT_SLICE_ELEMENTS = 1 << 22
# torch.quantile's input limit; the released RepQ-ViT family falls back to np.percentile above it.
TORCH_QUANTILE_LIMIT = 1 << 24


@dataclass(frozen=True)
class RangeSearch:
    """How a quantizer picks its clipping range from calibration data.

    Attributes:
        method: "minmax" (full range), "percentile" (clip at `percentiles[0]` and its mirror),
            or "mse" (try every percentile in `percentiles`, keep the one with least squared
            quantization error, per group; RepQ-ViT's search).
        percentiles: upper percentiles in (0, 1]; the lower clip is 1 - p.
        max_samples: above this many elements, uniform and log-sqrt2 quantizers run the
            exact search over slices of at most this size (`quant.streamed_search`, the same
            result as on the whole input); the other kinds subsample (seeded) to this size, so
            calibration memory stays bounded for large calibration sets.
    """

    method: str = "mse"
    percentiles: Sequence[float] = field(default=(0.999, 0.9999, 0.99999))
    max_samples: int = 1 << 24

    def __post_init__(self) -> None:
        if self.method not in RANGE_METHODS:
            raise ValueError(f"unknown range method {self.method!r}; choose one of {RANGE_METHODS}")
        if not self.percentiles or any(not 0.5 < p <= 1.0 for p in self.percentiles):
            raise ValueError(f"percentiles must lie in (0.5, 1], got {list(self.percentiles)}")
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))


def quantiles(x2d: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Row-wise quantiles with linear interpolation, shape [len(qs), G], bit-identical to what
    the released RepQ-ViT family computes: torch.quantile for rows of at most 2**24 elements
    (ranks and weights in the data's dtype, torch.lerp) and np.percentile above (float64).
    The last float bit matters: at 3-4 bits a percentile one ulp off can flip a rounding tie or
    the MSE pick and the difference grows block by block (docs/anchors/ias).

    Exact for any row length (no 2**24 limit): sorts short rows, uses kthvalue on long ones.
    """
    plan = QuantileRanks(x2d.shape[1], qs, x2d.dtype)
    return plan.interpolate(_order_statistics(x2d, plan.needed()))


class QuantileRanks:
    """Which order statistics the quantiles `qs` of `m` values need, and how they are interpolated:
    torch.quantile's arithmetic up to 2**24 values (rank q (m - 1) and weight in `dtype`, torch.lerp),
    np.percentile's above (float64). Shared by `quantiles` and the streamed search
    (`ptqbench.quant.streamed_search`), which finds the same order statistics without the whole row."""

    def __init__(self, m: int, qs: Sequence[float], dtype: torch.dtype) -> None:
        self.m, self.dtype = m, dtype
        self.numpy = m > TORCH_QUANTILE_LIMIT
        if not self.numpy:
            ranks = torch.tensor(list(qs), dtype=dtype) * (m - 1)
            lo, hi = ranks.long(), ranks.ceil().long()
            self.weight = ranks - lo.to(dtype)
        else:  # np.percentile(x, 100 q): float64 arithmetic
            pos = torch.tensor([q * 100 / 100 * (m - 1) for q in qs], dtype=torch.float64)
            lo, hi = pos.floor().long(), pos.ceil().long()
            self.weight = pos - lo.double()
        self.lo, self.hi = lo.tolist(), hi.tolist()

    def needed(self) -> list[int]:
        """The 0-based ranks (ascending order) the quantiles interpolate between."""
        return sorted(set(self.lo) | set(self.hi))

    def interpolate(self, picked: dict[int, torch.Tensor]) -> torch.Tensor:
        """The quantiles, shape [len(qs), G], from the order statistics `picked` (rank -> [G])."""
        lo = torch.stack([picked[i] for i in self.lo])
        hi = torch.stack([picked[i] for i in self.hi])
        weight = self.weight.to(lo.device)[:, None].expand_as(lo)
        if not self.numpy:
            return torch.lerp(lo, hi, weight)
        return torch.lerp(lo.double(), hi.double(), weight).to(self.dtype)


def _order_statistics(x2d: torch.Tensor, needed: list[int]) -> dict[int, torch.Tensor]:
    """Row-wise i-th smallest values (0-based) for every i in `needed`, each of shape [G]."""
    g, m = x2d.shape
    if m <= _KTH_THRESHOLD or g > 1:
        # sorted a few rows at a time: a sort holds its values and int64 indices (12 bytes per
        # element), so a whole per-channel [C, images x tokens] matrix at once was the peak of
        # calibration; rows sort independently, so the picked order statistics are the same
        rows = max(1, _SORT_SLICE_ELEMENTS // m)
        cols = torch.tensor(needed, device=x2d.device)
        parts = [torch.sort(x2d[r:r + rows], dim=1).values.index_select(1, cols) for r in range(0, g, rows)]
        srt = torch.cat(parts) if len(parts) > 1 else parts[0]
        return {i: srt[:, k] for k, i in enumerate(needed)}
    return {i: torch.kthvalue(x2d, i + 1, dim=1).values for i in needed}


def subsample(x2d: torch.Tensor, max_samples: int, seed: int = 0) -> torch.Tensor:
    """Keep at most `max_samples` elements in total, same columns for every row (seeded)."""
    g, m = x2d.shape
    if g * m <= max_samples:
        return x2d
    keep = max(1, max_samples // g)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(m, generator=gen)[:keep].to(x2d.device)
    return x2d[:, idx]


def candidate_ranges(x2d: torch.Tensor, search: RangeSearch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (lo, hi) candidates per group that `search` considers, each of shape [G]."""
    if search.method == "minmax":
        return [(x2d.amin(dim=1), x2d.amax(dim=1))]
    ps = list(search.percentiles) if search.method == "mse" else [search.percentiles[0]]
    qs = quantiles(x2d, [1.0 - p for p in ps] + ps)
    n = len(ps)
    return [(qs[i], qs[n + i]) for i in range(n)]


def pick_by_mse(
    x2d: torch.Tensor,
    candidates: Sequence[tuple[torch.Tensor, ...]],
    quantize: Callable[..., torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """Per group, the candidate whose `quantize(x2d, *candidate)` has the least mean squared error.

    Ties keep the earlier candidate, as RepQ-ViT's strict `<` does.
    """
    if len(candidates) == 1:
        return tuple(candidates[0])
    best = None
    best_err = None
    for cand in candidates:
        err = (quantize(x2d, *cand) - x2d).pow(2).mean(dim=1)
        if best is None:
            best, best_err = [c.clone() for c in cand], err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = [torch.where(better, c, b) for c, b in zip(cand, best)]
    return tuple(best)


def attention_slices(x: torch.Tensor, operand: Optional[torch.Tensor], max_samples: int
                     ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Whole leading slices (e.g. (image, head) attention maps) of `x`, and of `operand` (V of A @ V)
    when it matches, up to `max_samples` elements of x, taken evenly (deterministic): what an
    attention-map quantizer searches its parameters on when it measures the error of A @ V."""
    v = operand
    if x.dim() < 2:
        return x.float().reshape(1, -1), None
    lead = x.shape[:-2]
    xs = x.float().reshape(-1, *x.shape[-2:])
    ok = v is not None and v.dim() == x.dim() and v.shape[:-2] == lead and v.shape[-2] == x.shape[-1]
    vs = v.float().reshape(-1, *v.shape[-2:]) if ok else None
    per = xs[0].numel()
    keep = max(1, min(xs.shape[0], max_samples // per))
    idx = torch.linspace(0, xs.shape[0] - 1, keep).round().long().unique().to(xs.device)
    return xs[idx], (vs[idx].to(xs.device) if vs is not None else None)
