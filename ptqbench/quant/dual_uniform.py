"""Dual uniform weight quantization (ERQ, TPAMI 2025): the input columns that most often hold a
row's outliers get their own per-row scale and zero point.

For a Linear weight W [Cout, Cin]: in each row, an entry is an outlier if it lies above the 99th
percentile of the row's positive entries or below the 1st percentile of its negative entries.
Columns are ranked by how many rows they are an outlier in, and the top `Cout // divisor` columns
(only columns that are an outlier somewhere; ties broken by lower column index, or with
`tie_break="first_seen"` as the released code's `Counter.most_common` breaks them: the column
that was an outlier in an earlier row first, then the lower index) form the outlier group. Each row then has two (scale, zero point) pairs: one fitted on its outlier-group entries,
one on the rest, each with the protocol's range search. Same code width for both; the column
group is one bit per input channel, shared by all rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import register_kind
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.uniform import fake_quant, fit_rows, qrange


def _row_quantile_of_subset(sorted_rows: torch.Tensor, start: torch.Tensor, count: torch.Tensor, q: float) -> torch.Tensor:
    """Per row, the q-quantile (linear interpolation) of the `count` entries of `sorted_rows`
    starting at column `start`; NaN where count == 0."""
    pos = q * (count - 1).clamp(min=0).double()
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.double()).to(sorted_rows.dtype)
    last = sorted_rows.shape[1] - 1
    v_lo = sorted_rows.gather(1, (start + lo).clamp(max=last)[:, None])[:, 0]
    v_hi = sorted_rows.gather(1, (start + hi).clamp(max=last)[:, None])[:, 0]
    out = v_lo + (v_hi - v_lo) * frac
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


TIE_BREAKS = ("column", "first_seen")


def outlier_columns(w: torch.Tensor, n_columns: int, percentile: float = 99.0, tie_break: str = "column") -> torch.Tensor:
    """Boolean mask over the columns of `w` [rows, cols]: the `n_columns` columns that are most often
    a row's outlier (see module docstring for `tie_break`)."""
    w = w.detach().float()
    srt = torch.sort(w, dim=1).values
    n_neg = (w < 0).sum(1)
    n_pos = (w > 0).sum(1)
    cols = w.shape[1]
    pos_thr = _row_quantile_of_subset(srt, cols - n_pos, n_pos, percentile / 100.0)
    neg_thr = _row_quantile_of_subset(srt, torch.zeros_like(n_neg), n_neg, 1.0 - percentile / 100.0)
    big = (w > pos_thr[:, None]) & (n_pos > 0)[:, None]
    small = (w < neg_thr[:, None]) & (n_neg > 0)[:, None]
    outlier = big | small
    counts = outlier.sum(0).tolist()
    if tie_break == "first_seen":  # the first row in which each column is an outlier (rows if never)
        rows = torch.arange(w.shape[0], device=w.device)[:, None].expand_as(outlier)
        first = torch.where(outlier, rows, w.shape[0]).amin(0).tolist()
        order = sorted(range(cols), key=lambda c: (-counts[c], first[c], c))
    else:
        order = sorted(range(cols), key=lambda c: (-counts[c], c))
    chosen = [c for c in order[:n_columns] if counts[c] > 0]
    mask = torch.zeros(cols, dtype=torch.bool, device=w.device)
    mask[chosen] = True
    return mask


@dataclass(frozen=True)
class DualUniformOptions:
    """divisor and percentile of the two per-row scales (see `DualUniformQuantizer`)."""

    divisor: int = 20
    percentile: float = 99.0
    tie_break: str = "column"


@register_kind("dual_uniform", options=DualUniformOptions, search=True)
class DualUniformQuantizer(Quantizer):
    """Per-row uniform weight quantizer with two scale/zero-point pairs per row, chosen by column
    group. For 2-D Linear weights only.

    Args:
        bits: code width of both groups.
        role: "weight".
        divisor: the outlier group has `rows // divisor` columns (ERQ: 20).
        percentile: a row's outliers lie beyond this percentile of its positive entries (and the
            mirrored one of its negative entries); ERQ: 99.
        search: range search used for each group's per-row range.
        tie_break: "column" or "first_seen" (the released order; module docstring).
    """

    kind = "dual_uniform"

    def __init__(self, bits: int, role: str, divisor: int = 20, percentile: float = 99.0,
                 search: RangeSearch = RangeSearch(), tie_break: str = "column") -> None:
        super().__init__(bits, role)
        if divisor < 1:
            raise ValueError(f"dual uniform divisor must be >= 1, got {divisor}")
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"dual uniform tie_break={tie_break!r}; choose one of {TIE_BREAKS}")
        self.tie_break = tie_break
        self.divisor = divisor
        self.percentile = percentile
        self.search = search
        self.qmin, self.qmax = qrange(self.bits, False)
        self.register_buffer("column_mask", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("scale", torch.ones(0, 2))
        self.register_buffer("zero_point", torch.zeros(0, 2))

    def _fit(self, w: torch.Tensor) -> None:
        if w.dim() != 2:
            raise ValueError(f"dual uniform quantization needs a 2-D Linear weight, got shape {tuple(w.shape)}")
        w = w.float()
        mask = outlier_columns(w, w.shape[0] // self.divisor, self.percentile, self.tie_break)
        scale = torch.ones(w.shape[0], 2, device=w.device)
        zero = torch.zeros(w.shape[0], 2, device=w.device)
        for g, cols in enumerate((~mask, mask)):  # group 0: ordinary columns, 1: outlier columns
            if cols.any():
                scale[:, g], zero[:, g] = fit_rows(w[:, cols], self.bits, False, self.search)
        self.column_mask = mask
        self.scale, self.zero_point = scale, zero

    def elementwise_params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of every element of the weight `w` [rows, cols]."""
        m = self.column_mask[None, :]
        s = torch.where(m, self.scale[:, 1:2], self.scale[:, 0:1])
        z = torch.where(m, self.zero_point[:, 1:2], self.zero_point[:, 0:1])
        return s.expand_as(w), z.expand_as(w)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        s, z = self.elementwise_params(w)
        return fake_quant(w, s, z, self.qmin, self.qmax)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="channel", groups=2, outlier_columns=int(self.column_mask.sum()),
                 range=self.search.method)
        return d
