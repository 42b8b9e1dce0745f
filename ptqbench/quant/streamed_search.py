"""The clipping-range search of a quantizer over an input too large to hold whole.

Streamed calibration (`ptqbench.quant.calibration`) hands such a quantizer its input as a
sequence of chunks that it can read several times (`EachInput`), never joined. The search then
makes one pass for the candidates and one for their errors, with memory for one chunk. Each chunk
is seen as rows, one per group the quantizer scales (`Rows`: one row per tensor, or one per
channel or head); every row's search is independent:

- quantiles: the candidates are high percentiles (0.999 and up, and their mirrors), so the order
  statistics they interpolate lie in the input's tails. Each chunk's k largest and k smallest
  values per row are merged into running tails; the quantiles interpolate those order statistics
  with the arithmetic of `ranges.quantiles` (np.percentile's above 2**24 values per row). Exact,
  for any size.
- any quantile (`streamed_order_statistics`): radix selection on the float32 bit patterns, one
  pass per byte (four), each counting per row how many values share the answer's leading bytes so
  far and fall in each of 256 next-byte bins. Exact, for any size and any quantile, with memory
  for a histogram per row and order statistic (the grid search's 0.1- and 0.9-quantiles, whose
  tails are a fifth of the input).
- mean squared error: summed chunk by chunk in float64 per row, compared with the strict `<` of
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
# A pass over pieces of rows: calls the given function on each (row indices [g], values [g, v]); a
# row's values may come in any number of pieces, in any order.
EachPiece = Callable[[Callable[[torch.Tensor, torch.Tensor], None]], None]
# A chunk as a [groups, values] matrix: the rows the quantizer fits one range each on.
Rows = Callable[[torch.Tensor], torch.Tensor]


def one_row(chunk: torch.Tensor) -> torch.Tensor:
    """Per-tensor quantizers: the whole chunk is one row."""
    return chunk.reshape(1, -1)

# The tails the quantiles need may hold at most this fraction of the input; a search needing more
# (percentiles closer to the median) joins the input instead (`tails_fit`).
MAX_TAIL_FRACTION = 1 / 16


def over_slices(x: torch.Tensor, size: int, dim: Optional[int] = None) -> EachInput:
    """`x` read in consecutive slices of at most about `size` elements: bounds the temporaries of a
    search on a tensor that is already whole (the one-pass calibration). Flat slices, or with
    `dim` whole slices along that dimension (so each slice keeps every channel)."""
    if dim is None:
        parts = x.reshape(-1).split(size)
    else:
        parts = x.split(max(1, size * x.shape[dim] // max(1, x.numel())), dim)

    def each(fn: Callable[[torch.Tensor], None]) -> None:
        for part in parts:
            fn(part)
    return each


def _tail_sizes(plan: QuantileRanks) -> tuple[int, int]:
    """How many smallest and largest values hold every order statistic the quantiles need."""
    m, needed = plan.m, plan.needed()
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
    low, high = _tail_sizes(QuantileRanks(m, _quantile_levels(search, two_sided), torch.float32))
    return max(low, high) <= m * MAX_TAIL_FRACTION


class _Tails:
    """Per row, the `low` smallest and `high` largest values seen so far, and how many were seen."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.small: Optional[torch.Tensor] = None
        self.large: Optional[torch.Tensor] = None
        self.count = 0

    @staticmethod
    def _merge(kept: Optional[torch.Tensor], rows: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
        part = torch.topk(rows, min(k, rows.shape[1]), dim=1, largest=largest, sorted=False).values
        both = part if kept is None else torch.cat([kept, part], dim=1)
        return torch.topk(both, min(k, both.shape[1]), dim=1, largest=largest, sorted=False).values

    def add(self, rows: torch.Tensor) -> None:
        self.count += rows.shape[1]
        if self.low:
            self.small = self._merge(self.small, rows, self.low, largest=False)
        if self.high:
            self.large = self._merge(self.large, rows, self.high, largest=True)

    def order_statistics(self, m: int, needed: list[int]) -> dict[int, torch.Tensor]:
        """Rank (0-based, ascending, among a row's m values) -> that value in every row, shape [G]."""
        small = torch.sort(self.small, dim=1).values if self.small is not None else None
        large = torch.sort(self.large, dim=1).values if self.large is not None else None
        return {i: (small[:, i] if i < m // 2 else large[:, i - (m - self.high)]) for i in needed}


def _groups(numel: int, chunk_rows: torch.Tensor) -> tuple[int, int]:
    """(groups, values per group) of an input of `numel` values whose chunks have these rows."""
    g = chunk_rows.shape[0]
    if numel % g:
        raise CalibrationError(f"the streamed calibration input has {numel} values, not a multiple of its {g} groups")
    return g, numel // g


def streamed_candidates(each_input: EachInput, numel: int, search: RangeSearch, two_sided: bool,
                        rows: Rows = one_row) -> list[tuple[torch.Tensor, ...]]:
    """The candidates `ranges.candidate_ranges` gives for the whole input's rows (two-sided:
    (lo, hi) per candidate; one-sided: (hi,), the upper quantiles only), each of shape [G], in one
    pass over an input of `numel` values in all."""
    if search.method == "minmax":
        lo: Optional[torch.Tensor] = None
        hi: Optional[torch.Tensor] = None

        def extremes(chunk: torch.Tensor) -> None:
            nonlocal lo, hi
            r = rows(chunk).float()
            lo = r.amin(dim=1) if lo is None else torch.minimum(lo, r.amin(dim=1))
            hi = r.amax(dim=1) if hi is None else torch.maximum(hi, r.amax(dim=1))
        each_input(extremes)
        if lo is None or hi is None:
            raise CalibrationError("the streamed calibration input had no chunks")
        return [(lo, hi)] if two_sided else [(hi,)]
    levels = _quantile_levels(search, two_sided)
    state: dict[str, object] = {}

    def collect(chunk: torch.Tensor) -> None:
        r = rows(chunk).float()
        if not state:
            g, m = _groups(numel, r)
            plan = QuantileRanks(m, levels, torch.float32)
            state.update(m=m, plan=plan, tails=_Tails(*_tail_sizes(plan)))
        state["tails"].add(r)
    each_input(collect)
    if not state:
        raise CalibrationError("the streamed calibration input had no chunks")
    m, plan, tails = state["m"], state["plan"], state["tails"]
    if tails.count != m:
        raise CalibrationError(f"the streamed calibration input has {tails.count} values per group, {m} were expected: "
                               "the quantizer's input does not scale with the number of images")
    qs = plan.interpolate(tails.order_statistics(m, plan.needed()))
    if not two_sided:
        return [(qs[i],) for i in range(len(levels))]
    n = len(levels) // 2
    return [(qs[i], qs[n + i]) for i in range(n)]


def streamed_pick_by_mse(each_input: EachInput, candidates: Sequence[tuple[torch.Tensor, ...]],
                         quantize: Callable[..., torch.Tensor], rows: Rows = one_row) -> tuple[torch.Tensor, ...]:
    """`ranges.pick_by_mse` on rows read in chunks: `quantize(chunk_rows, *candidate)`; squared
    errors summed per row in float64; ties keep the earlier candidate."""
    if len(candidates) == 1:
        return tuple(candidates[0])
    sse: Optional[torch.Tensor] = None

    def accumulate(chunk: torch.Tensor) -> None:
        nonlocal sse
        r = rows(chunk).float()
        errs = torch.stack([(quantize(r, *cand) - r).pow(2).sum(dim=1, dtype=torch.float64) for cand in candidates])
        sse = errs if sse is None else sse + errs
    each_input(accumulate)
    if sse is None:
        raise CalibrationError("the streamed calibration input had no chunks")
    best = [c.clone() for c in candidates[0]]
    best_err = sse[0]
    for k in range(1, len(candidates)):
        better = sse[k] < best_err
        best_err = torch.where(better, sse[k], best_err)
        best = [torch.where(better, c, b) for c, b in zip(candidates[k], best)]
    return tuple(best)


_RADIX_BITS = 8
_RADIX_BLOCK = 1 << 20  # values counted at once (their int64 bins and counts: 16 MB)


def _sortable_keys(v: torch.Tensor) -> torch.Tensor:
    """int32 keys in the order of the float32 values (IEEE bits, the negatives' magnitude bits flipped)."""
    i = v.view(torch.int32)
    return torch.where(i < 0, i ^ 0x7FFFFFFF, i)


def _values_of_keys(k: torch.Tensor) -> torch.Tensor:
    return torch.where(k < 0, k ^ 0x7FFFFFFF, k).view(torch.float32)


def streamed_order_statistics(each_piece: EachPiece, rows: int, needed: Sequence[int]) -> dict[int, torch.Tensor]:
    """Rank (0-based, ascending) -> that value of every row, shape [rows]: the order statistics of
    float32 rows read in pieces, never whole. Radix selection, most significant byte first: each of
    four passes counts, per row and rank, the values whose leading bytes are the rank's answer so
    far, by their next byte; the byte whose cumulative count passes the rank extends the answer.
    Memory: rows x ranks x 256 counts and the temporaries of a block of 2^20 values.

    The value is the one a sort puts at that rank, except that -0.0 always sorts before +0.0
    (a sort keeps them in input order): only the sign of a zero can differ."""
    ranks = sorted(set(int(r) for r in needed))
    if not ranks:
        return {}
    bins = 1 << _RADIX_BITS
    prefix = torch.zeros(rows, len(ranks), dtype=torch.int64)  # the answers' leading bytes, as key >> shift
    remaining = torch.tensor(ranks, dtype=torch.int64).repeat(rows, 1)  # ranks within those buckets
    for shift in range(32 - _RADIX_BITS, -1, -_RADIX_BITS):
        counts = torch.zeros(rows, len(ranks), bins, dtype=torch.int64)
        high = prefix.to(torch.int32)

        def count(idx: torch.Tensor, piece: torch.Tensor, shift: int = shift, counts: torch.Tensor = counts,
                  high: torch.Tensor = high) -> None:
            for block in piece.split(max(1, _RADIX_BLOCK // max(1, piece.shape[0])), dim=1):
                keys = _sortable_keys(block.float())
                if shift == 32 - _RADIX_BITS:  # the sign byte, offset to 0..255; every rank counts alike
                    digit = (keys >> shift).add_(bins // 2).long()
                    hist = torch.zeros(len(idx), bins, dtype=torch.int64).scatter_add_(1, digit, torch.ones_like(digit))
                    counts.index_add_(0, idx, hist[:, None, :].expand(-1, len(ranks), -1))
                    continue
                digit = ((keys >> shift) & (bins - 1)).long()
                above = keys >> (shift + _RADIX_BITS)
                mine = high.index_select(0, idx)
                for r in range(len(ranks)):
                    inside = (above == mine[:, r:r + 1]).long()
                    counts[:, r].index_add_(0, idx, torch.zeros(len(idx), bins, dtype=torch.int64).scatter_add_(1, digit, inside))

        each_piece(count)
        cum = counts.cumsum(-1)
        if shift == 32 - _RADIX_BITS and int(cum[0, 0, -1]) <= ranks[-1]:
            raise CalibrationError(f"rank {ranks[-1]} asked of rows with {int(cum[0, 0, -1])} values")
        digit = (cum <= remaining[..., None]).sum(-1)  # the first bin whose cumulative count passes the rank
        remaining -= torch.where(digit > 0, cum.gather(-1, (digit - 1).clamp(min=0)[..., None]).squeeze(-1), 0)
        prefix = prefix * bins + digit - (bins // 2 if shift == 32 - _RADIX_BITS else 0)
    values = _values_of_keys(prefix.to(torch.int32))
    return {r: values[:, k] for k, r in enumerate(ranks)}


def streamed_quantiles(each_piece: EachPiece, rows: int, m: int, qs: Sequence[float]) -> torch.Tensor:
    """`ranges.quantiles` of `rows` rows of `m` values each, read in pieces: [len(qs), rows]."""
    plan = QuantileRanks(m, qs, torch.float32)
    return plan.interpolate(streamed_order_statistics(each_piece, rows, plan.needed()))
