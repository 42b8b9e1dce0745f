"""The clipping-range search of a per-tensor quantizer over an input too large to hold whole.

Streamed calibration (`ptqbench.quant.calibration`) hands such a quantizer its input as a
sequence of chunks that it can read several times (`EachInput`), never joined. The search then
makes one pass for the candidates and one for their errors, with memory for one chunk:

- quantiles: the candidates are high percentiles (0.999 and up, and their mirrors), so the order
  statistics they interpolate lie in the input's tails. Each chunk's k largest and k smallest
  values are merged into running tails; the quantiles interpolate those order statistics with
  the arithmetic of `ranges.quantiles` (np.percentile's above 2**24 values). Exact, for any size.
- mean squared error: summed chunk by chunk in float64, compared with the strict `<` of
  `ranges.pick_by_mse` (earlier candidate on ties).

These are the statistics the released RepQ-ViT family computes on its whole input (torch.quantile,
and np.percentile where torch.quantile refuses), so no subsample is needed above 2**24 values.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ptqbench.errors import CalibrationError
from ptqbench.quant.ranges import QuantileRanks, RangeSearch

# A pass over a quantizer's input: calls the given function on each chunk (any shape), in order.
EachInput = Callable[[Callable[[torch.Tensor], None]], None]

# The tails the quantiles need may hold at most this fraction of the input; a search needing more
# (percentiles closer to the median) joins the input instead (`tails_fit`).
MAX_TAIL_FRACTION = 1 / 16


def over_slices(x: torch.Tensor, size: int) -> EachInput:
    """`x` read as consecutive flat slices of `size` elements: bounds the temporaries of a search on
    a tensor that is already whole (the one-pass calibration)."""
    flat = x.reshape(-1)

    def each(fn: Callable[[torch.Tensor], None]) -> None:
        for part in flat.split(size):
            fn(part)
    return each


def _tail_sizes(m: int, qs: Sequence[float], dtype: torch.dtype) -> tuple[int, int]:
    """How many smallest and largest values hold every order statistic the quantiles need."""
    needed = QuantileRanks(m, qs, dtype).needed()
    low = [i for i in needed if i < m // 2]
    high = [i for i in needed if i >= m // 2]
    return (max(low) + 1 if low else 0), (m - min(high) if high else 0)


def _quantile_levels(search: RangeSearch, two_sided: bool) -> list[float]:
    ps = list(search.percentiles) if search.method == "mse" else [search.percentiles[0]]
    return [1.0 - p for p in ps] + ps if two_sided else ps


def tails_fit(m: int, search: RangeSearch, two_sided: bool) -> bool:
    """Whether the streamed search can run `search` on `m` values with tails of bounded size."""
    if search.method == "minmax":
        return True
    low, high = _tail_sizes(m, _quantile_levels(search, two_sided), torch.float32)
    return max(low, high) <= m * MAX_TAIL_FRACTION


class _Tails:
    """The `low` smallest and `high` largest values seen so far, and how many values were seen."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.small: Optional[torch.Tensor] = None
        self.large: Optional[torch.Tensor] = None
        self.count = 0

    @staticmethod
    def _merge(kept: Optional[torch.Tensor], chunk: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
        part = torch.topk(chunk, min(k, chunk.numel()), largest=largest, sorted=False).values
        both = part if kept is None else torch.cat([kept, part])
        return torch.topk(both, min(k, both.numel()), largest=largest, sorted=False).values

    def add(self, chunk: torch.Tensor) -> None:
        flat = chunk.reshape(-1).float()
        self.count += flat.numel()
        if self.low:
            self.small = self._merge(self.small, flat, self.low, largest=False)
        if self.high:
            self.large = self._merge(self.large, flat, self.high, largest=True)

    def order_statistics(self, m: int, needed: list[int]) -> dict[int, torch.Tensor]:
        """Rank (0-based, ascending, among all m values) -> that value, shape [1]."""
        small = torch.sort(self.small).values if self.small is not None else None
        large = torch.sort(self.large).values if self.large is not None else None
        out = {}
        for i in needed:
            out[i] = (small[i] if i < m // 2 else large[i - (m - self.high)]).reshape(1)
        return out


def streamed_candidates(each_input: EachInput, m: int, search: RangeSearch, two_sided: bool
                        ) -> list[tuple[torch.Tensor, ...]]:
    """The candidates `ranges.candidate_ranges` gives for the whole input (two-sided: (lo, hi) per
    candidate; one-sided: (hi,), the upper quantiles only), each of shape [1], in one pass."""
    if search.method == "minmax":
        lo, hi = torch.tensor([float("inf")]), torch.tensor([float("-inf")])

        def extremes(chunk: torch.Tensor) -> None:
            nonlocal lo, hi
            lo = torch.minimum(lo.to(chunk.device), chunk.min().float().reshape(1))
            hi = torch.maximum(hi.to(chunk.device), chunk.max().float().reshape(1))
        each_input(extremes)
        return [(lo, hi)] if two_sided else [(hi,)]
    levels = _quantile_levels(search, two_sided)
    plan = QuantileRanks(m, levels, torch.float32)
    tails = _Tails(*_tail_sizes(m, levels, torch.float32))
    each_input(tails.add)
    if tails.count != m:
        raise CalibrationError(f"the streamed calibration input has {tails.count} values, {m} were expected: "
                               "the quantizer's input does not scale with the number of images")
    qs = plan.interpolate(tails.order_statistics(m, plan.needed()))
    if not two_sided:
        return [(qs[i],) for i in range(len(levels))]
    n = len(levels) // 2
    return [(qs[i], qs[n + i]) for i in range(n)]


def streamed_pick_by_mse(each_input: EachInput, candidates: Sequence[tuple[torch.Tensor, ...]],
                         quantize: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """`ranges.pick_by_mse` for one row read in chunks: `quantize(chunk_2d, *candidate)` with the
    chunk as a [1, n] row; squared errors summed in float64; ties keep the earlier candidate."""
    if len(candidates) == 1:
        return tuple(candidates[0])
    sse = torch.zeros(len(candidates), dtype=torch.float64)

    def accumulate(chunk: torch.Tensor) -> None:
        row = chunk.reshape(1, -1).float()
        for k, cand in enumerate(candidates):
            sse[k] += (quantize(row, *cand) - row).pow(2).sum(dtype=torch.float64).cpu()
    each_input(accumulate)
    best = 0
    for k in range(1, len(candidates)):
        if sse[k] < sse[best]:
            best = k
    return tuple(c.clone() for c in candidates[best])
