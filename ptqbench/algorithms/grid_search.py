"""The calibration of the AdaLog / APHQ-ViT / FIMA-Q code family (and of its ViT ports of QDrop and
BRECQ): every layer's quantizers are picked from a grid of (scale, zero point) pairs by the error of
the layer's *output*, each layer on its FP input against its FP output (GoatWu/APHQ-ViT
`utils/calibrator.py: QuantCalibrator.batching_quant_calib`; the grids and searches of
`quant_layers/linear.py`, `matmul.py`, `conv.py`). Step by step, with the released function each
part follows, in docs/methods/qdrop.md.

Per layer, in the order the unit calls them (the release walks `named_modules`; with FP inputs
everywhere the order only matters through the reparameterization: each layer's FP tensors are
taken after the layers before it are searched and folded, so later layers see the folded model, as
in the release):

- Linear, per-tensor input (`AsymmetricallyBatchingQuantLinear.hyperparameter_searching`):
  weight grid per row: `num_zp = min(16, 2^b)` integer zero points centred on 2^(b-1), times
  `candidates / num_zp` scales spaced evenly from the (0.1, 0.9)-quantile width to the min-max
  width, over 2^b - 1; input grid the same from quantiles of the whole tensor (scales clamped at
  1e-4, the last pair repeated). Search: weights by their own MSE, the input by its own MSE, then
  `rounds` x (weights by output MSE, input by output MSE).
- Linear after a LayerNorm (`AsymmetricallyChannelWiseBatchingQuantLinear`): the input grid per
  channel, searched by each channel's own MSE; then the pair is reparameterized with the mean
  scale and the *rounded* mean zero point (`reparam_step1`, float32 as released), the captured
  input transformed by x / r - b, and the layer searched as a per-tensor one from scratch (the
  mean scale is replaced by the search's result).
- Conv (patch embedding; its 8-bit input is left FP): per output channel, 129 percentile pairs
  (0.99 ... 0.9999 spaced by a square root, and 1.0), searched by output MSE, then with the upper
  fixed (lower searched) and the lower fixed (upper searched).
- MatMul (q @ k^T, attn @ v; `AsymmetricallyBatchingQuantMatMul`): per head, 129 uppers between
  the 0.99- and 0.99999-quantile and 129 lowers between the 0.01- and 0.00001-quantile, zero point
  -round(lower / scale); the pairs (i, i) searched for A then B by output MSE, then `rounds` x
  (A with its upper fixed, A with its lower fixed, the same for B).

Scores are summed over images of the mean over the other axes, as released. As released, only the
first `candidates` entries of a grid are tried: the 129th (the appended input pair, the conv's
full-range pair, the matmul's 0.99999-quantile pair) never is (the search loops run to `eq_n`). Candidates and images
are processed in chunks (`budget_mb`); the release sizes its chunks by GPU memory. Only the float
summation order depends on the chunking.

A layer's FP tensors are never held whole: every pass of a search recomputes them a chunk of
`recompute_images` images at a time (`layer_chunks.LayerChunks`), and the grids' quantiles are found by
radix selection over those chunks (`streamed_search.streamed_order_statistics`), with
torch.quantile's values. Memory is flat in the number of images but for the units' input and
output; the price is the unit's forward up to the layer, once per pass and chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.algorithms.layer_chunks import Chunks, LayerChunks, Operand, parameters_as_saved, snapshot
from ptqbench.algorithms.reparam import reparameterize
from ptqbench.algorithms.streaming import forward_order, run_unit, split_chunks
from ptqbench.heap import free_heap_returned
from ptqbench.models.structure import ReparamPair, Unit
from ptqbench.progress import progress as progress_bar
from ptqbench.quant.calibration import quant_disabled
from ptqbench.quant.modules import QuantConv2d, QuantLinear, QuantMatMul
from ptqbench.quant.ranges import TORCH_QUANTILE_LIMIT
from ptqbench.quant.streamed_search import EachPiece, streamed_quantiles
from ptqbench.quant.uniform import UniformQuantizer

MIN_ACT_SCALE = 1e-4  # linear.py: calculate_percentile_activation_candidates clamps scales here


@dataclass(frozen=True)
class GridShape:
    """Where the candidates lie, as released (APHQ-ViT `quant_layers/*.py`); keys so that the shape
    can be ablated, the defaults being the release's:
    zero_points: integer zero points of a Linear's weight and input grids, centred on 2^(b-1)
        (`min(16, 2^b)`; even, so the grid is centred).
    narrow_quantile: q of the narrowest Linear scale, the (1 - q, q)-quantile width (0.9); the
        widest is the min-max width.
    conv_percentiles: the patch embedding's percentile range (0.99, 0.9999), spaced by
        i^conv_spacing (0.5: a square root) over the candidates, plus 1.0.
    matmul_quantiles: the matmul operands' upper quantile range (0.99, 0.99999), the lower one
        mirrored (0.01, 0.00001), spaced evenly.
    """

    zero_points: int = 16
    narrow_quantile: float = 0.9
    conv_percentiles: tuple[float, float] = (0.99, 0.9999)
    conv_spacing: float = 0.5
    matmul_quantiles: tuple[float, float] = (0.99, 0.99999)

    def __post_init__(self) -> None:
        for key in ("conv_percentiles", "matmul_quantiles"):
            pair = tuple(float(v) for v in getattr(self, key))
            if len(pair) != 2 or not 0.5 < pair[0] < pair[1] <= 1.0:
                raise ValueError(f"{key}={list(pair)}: give two quantiles, 0.5 < low < high <= 1")
            object.__setattr__(self, key, pair)
        if self.zero_points < 2 or self.zero_points % 2:
            raise ValueError(f"zero_points={self.zero_points}: the grid is centred on 2^(b-1), give an even number >= 2")
        if not 0.5 < self.narrow_quantile < 1.0:
            raise ValueError(f"narrow_quantile={self.narrow_quantile}: must lie in (0.5, 1)")
        if self.conv_spacing <= 0:
            raise ValueError(f"conv_spacing={self.conv_spacing}: must be > 0")


@dataclass(frozen=True)
class GridSearchConfig:
    """Attributes:
    candidates: grid size per quantizer (the release's `eq_n`; 128; at least two scales per zero
        point: 32 for the release's 16).
    rounds: alternating search rounds per layer (`search_round`; 3).
    image_chunk: images whose scores one sum adds up (the release's `calib_batch_size`, 32: with
        it the scores are summed in the release's order, which decides near-ties), and whose FP
        tensors are computed at once (the release's batches).
    recompute_images: images whose FP tensors a search recomputes at once (memory and speed only:
        the scores are summed over `image_chunk` images as if those were whole; each image's FP
        tensors do not depend on the others in its batch). 8: ViT-B's fc1 output is 19 MB for them.
    budget_mb: memory of one chunk of candidate outputs (memory and speed only; at least one
        candidate). 16: below glibc's 32 MiB mmap threshold the chunks reuse heap blocks; measured
        on the first two DeiT-T units, 1 thread: 8 MB 117 s, 16 MB 106 s, 24 MB 129 s, 128 MB 254 s
        (152 s of it page faults of fresh mappings).
    shape: where the candidates lie (GridShape, the release's by default).
    """

    candidates: int = 128
    rounds: int = 3
    image_chunk: int = 32
    recompute_images: int = 8
    budget_mb: int = 16
    shape: GridShape = GridShape()

    def __post_init__(self) -> None:
        # each zero point needs its narrowest and its widest scale
        if self.candidates < 2 * self.shape.zero_points:
            raise ValueError(f"grid search needs candidates >= 2 x zero_points ({2 * self.shape.zero_points}), "
                             f"got {self.candidates}")
        if self.rounds < 0 or self.image_chunk < 1 or self.recompute_images < 1 or self.budget_mb < 1:
            raise ValueError("grid search needs rounds >= 0, image_chunk >= 1, recompute_images >= 1 and budget_mb >= 1")


def _slices(total: int, per_item: int, budget_elems: int) -> Iterator[slice]:
    step = max(1, budget_elems // max(per_item, 1))
    for i in range(0, total, step):
        yield slice(i, min(total, i + step))


def qdq(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: int) -> torch.Tensor:
    """(clamp(round(x / s) + z, 0, qmax) - z) * s in the release's operation order."""
    return (x / s).round_().add_(z).clamp_(0, qmax).sub_(z).mul_(s)


Blocks = Callable[[torch.Tensor], list[tuple[int, torch.Tensor]]]


def per_tensor_rows(chunk: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """A chunk as (first row, [g, v] values) blocks: per tensor, one row of everything."""
    return [(0, chunk.reshape(1, -1))]


def per_head_rows(chunk: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """One row per head (dim 1): a head's values, image after image (a head at a time, no copy of
    the whole chunk)."""
    return [(h, chunk[:, h].reshape(1, -1)) for h in range(chunk.shape[1])]


def per_channel_rows(chunk: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """One row per channel (the last dim)."""
    return [(0, chunk.reshape(-1, chunk.shape[-1]).T)]


def _row_pieces(op: Operand, blocks_of: Blocks, parts: int, part_len: int) -> EachPiece:
    """The rows of an operand read chunk by chunk (each row continues where the last chunk left
    it), each cut into `parts` equal parts of `part_len` values: piece row index row x parts + part."""
    def each(fn: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        offset = 0  # values of every row in the chunks before
        for chunk in op.chunks():
            width = 0
            for first, rows in blocks_of(chunk):
                width = rows.shape[1]
                idx = torch.arange(first, first + rows.shape[0]) * parts
                start = 0
                while start < width:
                    part = (offset + start) // part_len
                    end = min(width, (part + 1) * part_len - offset)
                    fn(idx + part, rows[:, start:end])
                    start = end
            offset += width
    return each


def quantile_means(x: torch.Tensor | Operand, rows: int, blocks_of: Blocks,
                   qs: Sequence[Sequence[float]]) -> list[torch.Tensor]:
    """For each list of quantiles in `qs`, the quantiles of each of the `rows` rows of `x` (as
    `blocks_of` cuts its chunks): [len(q), rows]. A row torch.quantile refuses (more than 2^24
    values) is split, as released, into the fewest power-of-two equal parts it takes, and the
    parts' quantiles are averaged. The values are torch.quantile's on the whole rows bit for bit
    (`ranges.QuantileRanks`' arithmetic, then the mean over the parts in torch.quantile's memory
    layout per list), found by `streamed_order_statistics` in four passes over the chunks, never
    the whole operand (torch.quantile over all rows at once sorts every value with an int64 index,
    12 bytes a value: ViT-B's attention map at 128 images, 2.9 GB)."""
    op = Operand.of(x)
    m = op.shape.numel() // rows
    parts = 1
    while m % parts or m // parts > TORCH_QUANTILE_LIMIT:
        parts *= 2
    flat = [float(v) for q in qs for v in q]
    values = streamed_quantiles(_row_pieces(op, blocks_of, parts, m // parts), rows * parts, m // parts, flat)
    out, k = [], 0
    for q in qs:
        part = values[k:k + len(q)].T.contiguous().view(rows, parts, len(q))  # torch.quantile's layout, q fastest
        out.append(part.permute(2, 0, 1).mean(-1))
        k += len(q)
    return out


# -- grids -------------------------------------------------------------------------------------------
def _zero_point_grid(bits: int, candidates: int, zero_points: int) -> tuple[int, int, torch.Tensor]:
    levels = 2**bits
    num_zp = min(zero_points, levels)
    num_scale = candidates // num_zp
    zps = torch.arange(levels // 2 - num_zp // 2, levels // 2 + num_zp // 2, dtype=torch.float32)
    return num_zp, num_scale, zps.repeat_interleave(num_scale)


def weight_grid(w2d: torch.Tensor, bits: int, candidates: int,
                shape: GridShape = GridShape()) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero point) candidates of a Linear weight [rows, in]: [P, rows, 1] each."""
    num_zp, num_scale, zps = _zero_point_grid(bits, candidates, shape.zero_points)
    pct = torch.tensor([shape.narrow_quantile, 1.0])
    up = torch.quantile(w2d, pct, dim=-1)
    lo = torch.quantile(w2d, 1 - pct, dim=-1)
    d_min, d_max = up[0] - lo[0], up[1] - lo[1]
    splits = torch.linspace(0, 1, steps=num_scale)[:, None] * (d_max - d_min)
    scales = (d_min + splits).repeat(num_zp, 1) / (2**bits - 1)
    return scales[..., None], zps[:, None, None].expand_as(scales[..., None]).contiguous()


def act_grid(x: torch.Tensor | Operand, bits: int, candidates: int, per_channel: bool,
             shape: GridShape = GridShape()) -> tuple[torch.Tensor, torch.Tensor]:
    """Input (scale, zero point) candidates: [C, P + 1] per channel (last axis), [1, P + 1] per
    tensor; `x` whole or as its image chunks."""
    num_zp, num_scale, zps = _zero_point_grid(bits, candidates, shape.zero_points)
    pct = torch.tensor([shape.narrow_quantile, 1.0])
    high, low = [float(v) for v in pct], [float(v) for v in 1 - pct]
    op = Operand.of(x)
    if per_channel:  # torch.quantile(x2, q, dim=0)'s values
        c = op.shape[-1]
        values = streamed_quantiles(_row_pieces(op, per_channel_rows, 1, op.shape.numel() // c), c,
                                    op.shape.numel() // c, high + low)
        up, lo = values[:2].T, values[2:].T
    else:
        up, lo = (t.T for t in quantile_means(op, 1, per_tensor_rows, [high, low]))
    d_min, d_max = up[:, 0:1] - lo[:, 0:1], up[:, 1:] - lo[:, 1:]
    splits = torch.linspace(0, 1, steps=num_scale)[None, :] * (d_max - d_min)
    scales = ((d_min + splits).repeat(1, num_zp) / (2**bits - 1)).clamp(min=MIN_ACT_SCALE)
    scales = torch.cat([scales, scales[..., -1:]], dim=-1)
    z = zps[None, :].repeat(scales.shape[0], 1)
    return scales, torch.cat([z, z[..., -1:]], dim=-1)


def conv_bounds(w2d: torch.Tensor, candidates: int,
                shape: GridShape = GridShape()) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel upper and lower candidates of a conv weight [oc, fan_in]: [P + 1, oc, 1]."""
    (lo_p, hi_p), k = shape.conv_percentiles, shape.conv_spacing
    pct = torch.tensor([lo_p + (hi_p - lo_p) * (i / (candidates - 1)) ** k for i in range(candidates)] + [1.0])
    return torch.quantile(w2d, pct, dim=-1)[..., None], torch.quantile(w2d, 1 - pct, dim=-1)[..., None]


def matmul_bounds(x: torch.Tensor | Operand, candidates: int,
                  shape: GridShape = GridShape()) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head (dim 1) upper and lower candidates of a matmul operand (whole or as its image
    chunks): [P + 1, 1, H, 1, 1]."""
    pct = torch.tensor(list(shape.matmul_quantiles))
    op = Operand.of(x)
    up, lo = quantile_means(op, op.shape[1], per_head_rows, [[float(v) for v in pct], [float(v) for v in 1 - pct]])
    steps = torch.linspace(0, 1, steps=candidates + 1)[:, None, None, None, None]
    upper = up[0].view(1, 1, -1, 1, 1) + steps * (up[1] - up[0]).view(1, 1, -1, 1, 1)
    lower = lo[1].view(1, 1, -1, 1, 1) + steps * (lo[0] - lo[1]).view(1, 1, -1, 1, 1)
    return upper, lower


def pairs_from_bounds(upper: torch.Tensor, lower: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (upper - lower) / (2**bits - 1)
    return scale, -(lower / scale).round()


# -- searches ---------------------------------------------------------------------------------------
Errors = Callable[[slice], torch.Tensor]  # a candidate slice -> its per-row errors on one piece of rows


class _Searcher:
    """The per-layer searches on one layer's FP inputs and output, read chunk by chunk (`Chunks`).

    The scores are sums over `image_chunk` rows of dim 0 at a time (the release's batches), then
    over those groups; each group's errors are collected from the recomputed chunks (which may be
    smaller) and summed in one reduction of the shape and layout a whole group's errors have, over
    the candidate slices a whole group's budget gives: the same sums as on the whole tensors."""

    def __init__(self, cfg: GridSearchConfig) -> None:
        self.cfg = cfg
        self.budget = cfg.budget_mb * 2**20 // 4

    def group_sums(self, chunks: Chunks, candidates: int, per_row: int,
                   errors: Callable[[tuple[torch.Tensor, ...], torch.Tensor], Errors],
                   image_dim: int = 0) -> Iterator[tuple[slice, torch.Tensor]]:
        """(candidate slice, its errors summed over a group's rows), group after group.
        `per_row`: elements one candidate costs per row of dim 0 (sizes the slices);
        `errors(ins, out)`: prepares a piece of rows, then gives each slice's errors, with the
        rows along `image_dim`."""
        n, total_rows = self.cfg.image_chunk, chunks.shape(0)[0]
        # rows of the groups summed so far, rows of the current group so far, and per candidate
        # slice the current group's errors: a piece that is the whole group as computed, else a
        # buffer of the group's rows filled piece by piece (the tensor torch.cat of the pieces would
        # give, so the same sum). The buffers are allocated when a group starts, their shapes from
        # one row, so no small long-lived tensor lands between the large temporaries of
        # the pieces, which fragmented the heap (docs/benchmarks.md, "The grid search's fragmentation found").
        done, have, parts = 0, 0, {}
        kinds: dict[tuple[int, int], tuple[list[int], torch.dtype]] = {}  # a slice's error shape and dtype

        def plan(rows_in_group: int) -> list[slice]:
            return list(_slices(candidates, rows_in_group * per_row, self.budget))

        for ins, out in chunks:
            start = 0
            while start < out.shape[0]:
                group = min(n, total_rows - done)
                take = min(group - have, out.shape[0] - start)
                slices = plan(group)
                if have == 0 and take < group:  # the group's buffers, before any piece's temporaries
                    if any((sl.start, sl.stop) not in kinds for sl in slices):  # from one row, once per pass
                        one = errors(tuple(t[start:start + 1] for t in ins), out[start:start + 1])
                        for sl in slices:
                            e = one(sl)
                            kinds[(sl.start, sl.stop)] = (list(e.shape), e.dtype)
                    for sl in slices:
                        one_row, dtype = kinds[(sl.start, sl.stop)]
                        shape = [group if d == image_dim else size for d, size in enumerate(one_row)]
                        parts[(sl.start, sl.stop)] = out.new_empty(shape, dtype=dtype)
                err_of = errors(tuple(t[start:start + take] for t in ins), out[start:start + take])
                for sl in slices:
                    e, key = err_of(sl), (sl.start, sl.stop)
                    if take == group:
                        parts[key] = e
                    else:
                        parts[key].narrow(image_dim, have, take).copy_(e)
                    del e
                start, have = start + take, have + take
                if have == group:
                    for (a, b), errs in parts.items():
                        yield slice(a, b), errs.sum(image_dim)
                    parts, done, have = {}, done + group, 0
        if parts:
            raise RuntimeError(f"the layer's chunks had {done} rows summed and some left over, not {total_rows}")

    # self-MSE searches ---------------------------------------------------------------------------
    def weight_self(self, w2d: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: int) -> torch.Tensor:
        scores = []
        for sl in _slices(s.shape[0], w2d.numel(), self.budget):
            err = qdq(w2d[None].expand(s[sl].shape[0], -1, -1), s[sl], z[sl], qmax).sub_(w2d[None]).pow_(2)
            scores.append(err.mean(-1))
        return torch.cat(scores).argmin(0)  # [rows]

    def act_self(self, chunks: Chunks, s: torch.Tensor, z: torch.Tensor, qmax: int, per_channel: bool) -> torch.Tensor:
        """Index per channel ([C]) or per tensor ([1]) of the best input candidate by its own MSE."""
        total = torch.zeros(s.shape[0] if per_channel else 1, s.shape[1])

        def errors(ins: tuple[torch.Tensor, ...], _out: torch.Tensor) -> Errors:
            xb = ins[0].reshape(ins[0].shape[0], -1, ins[0].shape[-1])[..., None]  # [b, T, C, 1]

            def of(sl: slice) -> torch.Tensor:
                err = qdq(xb.expand(-1, -1, -1, sl.stop - sl.start), s[:, sl], z[:, sl], qmax).sub_(xb).pow_(2)
                err = err.mean(1)  # [b, C, p]
                return err if per_channel else err.mean(1, keepdim=True)
            return of

        for sl, summed in self.group_sums(chunks, s.shape[1], chunks.shape(0)[1:].numel(), errors):
            total[:, sl] += summed
        return total.argmin(-1)

    # output-MSE searches -------------------------------------------------------------------------
    def linear_weight(self, layer: QuantLinear, chunks: Chunks, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-row index of the best weight candidate by output MSE, the input through its quantizer."""
        w, bias, qmax = layer.weight.detach(), layer.bias, layer.weight_quantizer.qmax
        rows = w.shape[0]
        total = torch.zeros(s.shape[0], rows)

        def errors(ins: tuple[torch.Tensor, ...], ob: torch.Tensor) -> Errors:
            xq = layer.input_quantizer(ins[0]) if layer.input_quantizer is not None else ins[0]

            def of(sl: slice) -> torch.Tensor:
                p = sl.stop - sl.start
                wq = qdq(w[None].expand(p, -1, -1), s[sl], z[sl], qmax).reshape(p * rows, -1)
                o = F.linear(xq, wq, None if bias is None else bias.detach().repeat(p))
                o = o.view(*o.shape[:-1], p, rows)
                err = o.sub_(ob.unsqueeze(-2)).pow_(2)
                return err.mean(dim=tuple(range(1, err.dim() - 2))) if err.dim() > 3 else err
            return of

        for sl, summed in self.group_sums(chunks, s.shape[0], chunks.out_shape()[1:].numel(), errors):
            total[sl] += summed
        return total.argmin(0)

    def linear_input(self, layer: QuantLinear, chunks: Chunks, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Index ([1]) of the best per-tensor input candidate by output MSE, the weight quantized."""
        wq, bias, qmax = layer.quantized_weight().detach(), layer.bias, layer.input_quantizer.qmax
        total = torch.zeros(1, s.shape[1])

        def errors(ins: tuple[torch.Tensor, ...], ob: torch.Tensor) -> Errors:
            xb = ins[0]
            x4 = xb[..., None]

            def of(sl: slice) -> torch.Tensor:
                p = sl.stop - sl.start
                xs = qdq(x4.expand(*xb.shape, p), s[:, sl], z[:, sl], qmax).movedim(-1, -2)  # [..., p, C]
                err = F.linear(xs, wq, None if bias is None else bias.detach()).sub_(ob.unsqueeze(-2)).pow_(2).mean(-1)
                return err.mean(dim=tuple(range(1, err.dim() - 1))) if err.dim() > 2 else err
            return of

        per_row = chunks.out_shape()[1:].numel() + chunks.shape(0)[1:].numel()
        for sl, summed in self.group_sums(chunks, s.shape[1], per_row, errors):
            total[0, sl] += summed
        return total.argmin(-1)

    def conv_weight(self, layer: QuantConv2d, chunks: Chunks, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-output-channel index of the best candidate ([P, oc, 1]) by output MSE."""
        w, bias, qmax = layer.weight.detach(), layer.bias, layer.weight_quantizer.qmax
        oc = w.shape[0]
        w2d = w.reshape(oc, -1)
        total = torch.zeros(s.shape[0], oc)

        def errors(ins: tuple[torch.Tensor, ...], ob: torch.Tensor) -> Errors:
            xq = layer.input_quantizer(ins[0]) if layer.input_quantizer is not None else ins[0]

            def of(sl: slice) -> torch.Tensor:
                p = sl.stop - sl.start
                wq = qdq(w2d[None].expand(p, -1, -1), s[sl], z[sl], qmax).reshape(p * oc, *w.shape[1:])
                o = layer._conv_forward(xq, wq, None if bias is None else bias.detach().repeat(p))
                o = o.view(o.shape[0], p, oc, *o.shape[2:])
                return o.sub_(ob.unsqueeze(1)).pow_(2).mean(dim=(3, 4))
            return of

        for sl, summed in self.group_sums(chunks, s.shape[0], chunks.out_shape()[1:].numel(), errors):
            total[sl] += summed
        return total.argmin(0)

    def matmul_operand(self, chunks: Chunks, s: torch.Tensor, z: torch.Tensor, qmax: int, left: bool,
                       other: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Per-head index ([H]) of the best candidate for one operand (`left`: a), the other through
        `other` (its quantizer)."""
        total = torch.zeros(s.shape[0], chunks.shape(0)[1])

        def errors(ins: tuple[torch.Tensor, ...], ob: torch.Tensor) -> Errors:
            ab, bb = ins
            mine, theirs = (ab, other(bb)) if left else (bb, other(ab))

            def of(sl: slice) -> torch.Tensor:
                p = sl.stop - sl.start
                q = qdq(mine[None].expand(p, *mine.shape), s[sl], z[sl], qmax)
                o = q @ theirs[None] if left else theirs[None] @ q
                return o.sub_(ob[None]).pow_(2).mean(dim=tuple(range(3, o.dim())))  # [p, b, H]
            return of

        per_row = chunks.out_shape()[1:].numel() + chunks.shape(0 if left else 1)[1:].numel()
        for sl, summed in self.group_sums(chunks, s.shape[0], per_row, errors, image_dim=1):
            total[sl] += summed
        return total.argmin(0)


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[index[c], c, ...] along dim 0 (index per entry of dim 1), keeping dim 0."""
    idx = index.view(1, -1, *([1] * (t.dim() - 2))).expand(1, -1, *t.shape[2:])
    return torch.gather(t, 0, idx)


# -- per layer --------------------------------------------------------------------------------------
def _set_linear_input(q: UniformQuantizer, s: torch.Tensor, z: torch.Tensor, idx: torch.Tensor) -> None:
    q.set_params(s[0, idx[0]], z[0, idx[0]], None)


def search_linear(layer: QuantLinear, chunks: Chunks, cfg: GridSearchConfig) -> None:
    """`AsymmetricallyBatchingQuantLinear.hyperparameter_searching`."""
    sr = _Searcher(cfg)
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    search_w = isinstance(wq, UniformQuantizer) and wq.channel_axis == 0
    search_a = isinstance(aq, UniformQuantizer) and not aq.per_channel
    w2d = layer.weight.detach()
    if search_w:
        ws, wz = weight_grid(w2d, wq.bits, cfg.candidates, cfg.shape)
        best = sr.weight_self(w2d, ws, wz, wq.qmax)
        wq.set_params(_gather(ws, best).reshape(-1), _gather(wz, best).reshape(-1), 0)
    if search_a:
        grid = act_grid(Operand.input_of(chunks), aq.bits, cfg.candidates, per_channel=False, shape=cfg.shape)
        a_s, a_z = (t[:, :cfg.candidates] for t in grid)
        _set_linear_input(aq, a_s, a_z, sr.act_self(chunks, a_s, a_z, aq.qmax, per_channel=False))
    for _ in range(cfg.rounds):
        if search_w:
            best = sr.linear_weight(layer, chunks, ws, wz)
            wq.set_params(_gather(ws, best).reshape(-1), _gather(wz, best).reshape(-1), 0)
        if search_a:
            _set_linear_input(aq, a_s, a_z, sr.linear_input(layer, chunks, a_s, a_z))


def search_post_ln(layer: QuantLinear, pair: ReparamPair, chunks: Chunks, cfg: GridSearchConfig,
                   exact_padding: bool) -> None:
    """`AsymmetricallyChannelWiseBatchingQuantLinear`: per-channel input search, the reparameterization
    with the rounded mean zero point (float32, as released), then the per-tensor search on the
    transformed input x / r - b, with the input and output from before the fold (the release
    transforms the input it captured; recomputed chunks run the unit with the pair's parameters
    as they were)."""
    aq = layer.input_quantizer
    sr = _Searcher(cfg)
    grid = act_grid(Operand.input_of(chunks), aq.bits, cfg.candidates, per_channel=True, shape=cfg.shape)
    a_s, a_z = (t[:, :cfg.candidates] for t in grid)
    best = sr.act_self(chunks, a_s, a_z, aq.qmax, per_channel=True)
    s = torch.gather(a_s, 1, best[:, None]).reshape(-1)
    z = torch.gather(a_z, 1, best[:, None]).reshape(-1)
    aq.set_params(s, z, -1)
    s_t, z_t = s.mean(), z.mean().round()
    r = s / s_t
    b = (-z * s) / r - (-z_t * s_t)
    folded = [(pair.norm, "weight"), (pair.norm, "bias"), (pair.linear, "weight"), (pair.linear, "bias")]
    if pair.pad_site is not None:
        folded.append((pair.pad_site, "input_shift"))
    before = snapshot(folded)
    reparameterize(pair, round_zero_point=True, exact_padding=exact_padding, arithmetic="float32")
    search_linear(layer, chunks.transformed(lambda x: x / r - b, lambda: parameters_as_saved(before)), cfg)


def search_conv(layer: QuantConv2d, chunks: Chunks, cfg: GridSearchConfig) -> None:
    """`AsymmetricallyBatchingQuantConv2d.hyperparameter_searching` with an FP (8-bit) input: the
    pairs, then the upper fixed, then the lower fixed."""
    wq = layer.weight_quantizer
    if not (isinstance(wq, UniformQuantizer) and wq.channel_axis == 0):
        return
    sr = _Searcher(cfg)
    upper, lower = conv_bounds(layer.weight.detach().reshape(layer.weight.shape[0], -1), cfg.candidates, cfg.shape)

    def run(up: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        s, z = (t[:cfg.candidates] for t in pairs_from_bounds(up, lo, wq.bits))  # the last one is never tried
        best = sr.conv_weight(layer, chunks, s, z)
        wq.set_params(_gather(s, best).reshape(-1), _gather(z, best).reshape(-1), 0)
        return best

    best = run(upper, lower)
    if cfg.rounds:
        best = run(_gather(upper, best), lower)
        run(upper, _gather(lower, best))


def search_matmul(layer: QuantMatMul, chunks: Chunks, cfg: GridSearchConfig) -> None:
    """`AsymmetricallyBatchingQuantMatMul.hyperparameter_searching` (per head)."""
    qa, qb = layer.a_quantizer, layer.b_quantizer
    if not all(isinstance(q, UniformQuantizer) and q.channel_axis == 1 for q in (qa, qb)):
        return
    sr = _Searcher(cfg)
    bounds = {left: matmul_bounds(Operand.input_of(chunks, 0 if left else 1), cfg.candidates, cfg.shape)
              for left in (True, False)}

    def install(q: UniformQuantizer, s: torch.Tensor, z: torch.Tensor, idx: torch.Tensor) -> None:
        q.set_params(_gather(s.reshape(s.shape[0], -1), idx).reshape(-1),
                     _gather(z.reshape(z.shape[0], -1), idx).reshape(-1), 1)

    for left, q in ((True, qa), (False, qb)):  # start: the second-to-last pair of each
        s, z = pairs_from_bounds(*bounds[left], q.bits)
        q.set_params(s[-2].reshape(-1), z[-2].reshape(-1), 1)

    def run(left: bool, up: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        q, other = (qa, qb) if left else (qb, qa)
        s, z = (t[:cfg.candidates] for t in pairs_from_bounds(up, lo, q.bits))  # the last one is never tried
        idx = sr.matmul_operand(chunks, s, z, q.qmax, left, other)
        install(q, s, z, idx)
        return idx

    best = {left: run(left, *bounds[left]) for left in (True, False)}
    for _ in range(cfg.rounds):
        for left in (True, False):
            up, lo = bounds[left]
            best[left] = run(left, _gather(up.squeeze(1), best[left]).unsqueeze(1), lo)
            best[left] = run(left, up, _gather(lo.squeeze(1), best[left]).unsqueeze(1))


# -- the model --------------------------------------------------------------------------------------
@torch.no_grad()
def search_model(model: nn.Module, units: list[Unit], calib: torch.Tensor, cfg: GridSearchConfig,
                 pairs: Optional[list[ReparamPair]] = None, exact_padding: bool = True) -> dict[str, Any]:
    """Search every layer of `units` (forward order) on its FP input and output (see the module
    docstring); the post-LN Linears of `pairs` are reparameterized on the way. Quantizers the search
    does not handle keep their calibration.

    Each layer's FP tensors are recomputed a chunk of `cfg.recompute_images` images at a time whenever
    the search reads them (`LayerChunks`: a pass of its unit that stops at the layer), after the
    searches and folds of the layers before it, as the release runs the model batch by batch again
    for every module it calibrates. Memory holds the units' input and output and one chunk's
    tensors, whatever the number of images (holding one layer's whole tensors, ViT-B's fc1 at 128
    images held 620 MB)."""
    if not units:
        raise ValueError("the grid search needs the model's units in forward order (QuantizedModel.units); got none")
    by_linear = {id(p.linear): p for p in pairs or []}
    counts = {"searched_linears": 0, "searched_convs": 0, "searched_matmuls": 0, "reparameterized_pairs": 0}
    x = calib
    for unit in progress_bar(units, desc="grid search", unit="unit"):
        with quant_disabled(model):
            order, _ = forward_order(unit, x[:1])
        for layer in order:
            chunks = LayerChunks(unit.forward, layer, x, cfg.recompute_images, model)
            if isinstance(layer, QuantMatMul):
                search_matmul(layer, chunks, cfg)
                counts["searched_matmuls"] += 1
            elif isinstance(layer, QuantConv2d):
                search_conv(layer, chunks, cfg)
                counts["searched_convs"] += 1
            else:
                pair = by_linear.get(id(layer))
                aq = layer.input_quantizer
                if pair is not None and isinstance(aq, UniformQuantizer) and aq.per_channel:
                    search_post_ln(layer, pair, chunks, cfg, exact_padding)
                    counts["reparameterized_pairs"] += 1
                else:
                    search_linear(layer, chunks, cfg)
                counts["searched_linears"] += 1
            free_heap_returned()  # ptqbench.heap: the search's freed blocks, before the next layer's sizes
        with quant_disabled(model):
            x = torch.cat(run_unit(unit, split_chunks(x, cfg.recompute_images)))
    return counts
