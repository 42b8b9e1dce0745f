"""PTQ4ViT's Hessian-guided scale search (Yuan et al., ECCV 2022), bounded for CPU.

PTQ4ViT picks each layer's scaling factors to minimise a Hessian-guided distance between the
layer's quantized output O^ and its FP output O. With the Fisher approximation of the Hessian the
distance is E[(dL/dO)^2 (O^ - O)^2], dL/dO being the gradient of the task loss with respect to
the layer output, taken on the FP model over the calibration images.

What runs here (`search_model`):
1. Gradients: an FP forward/backward over the calibration batch (in chunks), loss = cross
   entropy against the FP model's own top-1 prediction (no labels needed); the gradient of every
   QuantLinear / QuantConv2d / QuantMatMul output of the unit being searched is kept, one unit at a
   time (every layer's gradients at once would hold 0.8 GB for DeiT-T and 32 images). For a
   classifier (no `loss` given) the backward runs unit by unit (`UnitGradients`): one reverse sweep
   keeps dL/d(each unit's output), and each layer's gradient comes from its unit's graph alone,
   backpropagated only as far as that layer's output, just before the layer is searched: memory
   holds one unit's autograd graph instead of the whole model's, and one layer's gradients
   instead of its unit's. The gradients are the ones the whole-model
   backward gives, bit for bit (tests/algorithms/test_hessian_search_streaming.py). A detector's
   loss (`loss`) reaches the backbone through its neck, which is not a chain of units: there each
   unit's gradients come from a whole-model backward (`output_grads`).
2. Units (embedding, each block, head; the caller passes them) in forward order. Per unit, the FP
   stream gives each layer's FP output O; per layer, in forward order, its input is read from the
   *quantized* stream (upstream layers already searched and quantized) with `search_inputs=quantized`,
   or from the FP stream (`search_inputs=fp`, the default, as the released code calibrates). A
   layer's FP input and output are captured just before it is searched (one partial FP pass of the
   unit each), so memory holds one layer's, not the whole unit's.
3. Per layer, `rounds` alternating rounds: the input (or first operand's) quantizer's candidates
   with the weight (second operand) fixed, then the weight's with the input fixed. Candidates:
   uniform: the min-max range of the tensor scaled by `candidates` values of alpha evenly spaced
   in [alpha_min, alpha_max], and the current one (kept unless a candidate does better);
   per-channel weights: every output channel picks its own alpha (the hessian and mse distances
   split over output channels, so this is exact; cosine is then taken per output channel); twin uniform post-softmax: split =
   2^-m, m in 0..candidates-1; twin post-GELU: the positive step scaled by alpha; TSPTQ-ViT's
   kinds (V-2SF: the coarse top alpha x max at the current k, and
   every k; O-2SF: the ordinary channels' range x alpha, and every outlier ratio's MSE fit). Metric:
   `hessian` (above), `mse` (E[(O^ - O)^2]) or `cosine` (mean cosine similarity per sample or per
   output channel, maximised). Each kind offers its candidates through one protocol
   (`search_candidates`, `search_params`, `apply_search_params`, next to its fit).
Quantizers of other kinds (log-sqrt2, the fully quantized roles) keep their calibration.
The released PTQ4ViT code's choices that differ from the above (per-tensor weights, per-head
operands, weight first, best candidate always installed, KL-residual gradients, the split scored
with v FP, the released initial steps) are `SearchConfig` keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.models.structure import Unit
from ptqbench.progress import progress as progress_bar
from ptqbench.quant.base import Quantizer
from ptqbench.quant.calibration import quant_disabled, switched
from ptqbench.quant.modules import QuantConv2d, QuantLinear, QuantMatMul
from ptqbench.quant.twin_uniform import TwinUniformQuantizer
from ptqbench.algorithms.streaming import (forward_order, hooks_removed_after, layer_call, params_frozen, quant_layers,
                                           split_chunks)
from ptqbench.quant.uniform import UniformQuantizer, params_from_range

SEARCH_METRICS = ("hessian", "mse", "cosine")
SEARCH_INPUTS = ("fp", "quantized")
WEIGHT_GRANULARITIES = ("channel", "tensor")
OPERAND_GRANULARITIES = ("tensor", "head")
SEARCH_ORDERS = ("input_first", "weight_first")
SEARCH_INITS = ("calibrated", "max")
RELEASED_INITIAL_SPLIT = 0.01  # the released twin softmax's split before its search
ACCEPTS = ("improve", "best")
GRAD_LOSSES = ("auto", "ce", "kl")
ALPHA_GRIDS = ("released", "linspace")


@dataclass(frozen=True)
class SearchConfig:
    """Knobs of the search (PTQ4ViT's and TSPTQ-ViT's method configs derive from this). The
    defaults are the released PTQ4ViT code's search (docs/anchors/ptq4vit/README.md, "Released
    recipe vs ptqbench"); ptqbench's earlier reading is `READING_KEYS` in
    ptqbench/methods/ptq4vit.py.

    Attributes:
        search_metric: hessian | mse | cosine.
        search_candidates: scales tried per quantizer and round (PTQ4ViT: 100).
        search_rounds: alternating input/weight rounds per layer (PTQ4ViT: 3; 0 = no search, and
            the other search keys are then refused away from their defaults: `inert_keys`).
        alpha_min, alpha_max: the candidates' range (PTQ4ViT: 0.01..1.2), see `alpha_grid`.
        alpha_grid: "released": alpha_min + (alpha_max - alpha_min) i / n for i = 0..n-1 (the
            end excluded), each times the release's initial step max / (2^(b-1) - 0.5) (b: the
            searched quantizer's bits): the released `eq_alpha`, `eq_beta`, `eq_n` grid. The
            release's quantizers are all signed; ptqbench applies the same signed factor to its
            other kinds too (TSPTQ-ViT's two-scale and asymmetric ones, which have no released
            grid), so every kind searches the same multiples;
            "linspace": n values from alpha_min to alpha_max, both included, times the min-max
            range (step max / (2^(b-1) - 1) for signed codes).
        chunk_size: images per forward/backward chunk of the gradient pass (the release's
            sub-batch, 4). Memory only, except with the KL loss, whose chunk-against-batch
            residuals depend on it.
        search_inputs: "fp": each layer is searched on its FP inputs against its FP output, as the
            released PTQ4ViT code calibrates (`sequential=False`); "quantized": on the inputs the
            already-searched upstream layers produce. Measured on DeiT-T W4A4, one round, 1300
            val images: "fp" 59.38 % top-1, "quantized" 0.46 %. Per-layer output errors fall in
            both; with quantized inputs the greedy search fits each layer to the upstream error
            (accuracy after each searched block, 100 images: 43 % after block 4, 12 % after
            block 7), with FP inputs every layer is fitted to its own quantization error only.
        weight_granularity: "channel": each output channel of a weight picks its own alpha;
            "tensor": one alpha per weight tensor, per q / k / v block of a fused qkv weight, the
            patch-embedding conv still per output channel (the released PTQ4ViT's `n_V=1`).
        operand_granularity: uniform matmul operands (q, k, v): "tensor": one alpha each; "head":
            one per attention head, each head picking its own (the released `n_G = heads`).
        search_order: within a round, a Linear's / conv's "input_first" or "weight_first" (the
            released order); a matmul always searches its first operand first.
        accept: "improve": a candidate replaces the current parameters only if it scores better
            (the current ones compete only when they have the searched granularity: a per-channel
            calibration does not, for `weight_granularity=tensor`); "best": the best candidate is
            installed whatever the current ones scored (released).
        grad_loss: the loss whose output gradients weight the hessian metric: "kl", the released
            KL divergence between the FP prediction of the whole batch and that of each chunk of
            `chunk_size` images, taken at its minimum: its gradients are float rounding residuals
            (classifiers only); "ce", cross entropy against the FP classifier's own top-1, and on
            a detector the detector's own loss; "auto", "kl" on a classifier and the detector's
            loss on a detector (PTQ4ViT released no detection code).
        split_fp_operand: a twin softmax's split is scored with the second operand (v) FP, as
            released (False: v through its current quantizer).
        search_init: what each quantizer holds before a layer's first round (it scores the other
            quantizer's first search; with `accept=improve` it also competes): "calibrated",
            the `Calibrate` step's ranges; "max", the released `_initialize_intervals`: step
            max|x| / (2^(b-1) - 0.5) (per head / per weight block as the granularities say),
            the twin softmax split 0.01, the post-GELU positive step max / (2^(b-1) - 0.5).
    """

    search_metric: str = "hessian"
    search_candidates: int = 100
    search_rounds: int = 3
    alpha_min: float = 0.01
    alpha_max: float = 1.2
    alpha_grid: str = "released"
    chunk_size: int = 4
    search_inputs: str = "fp"
    weight_granularity: str = "tensor"
    operand_granularity: str = "head"
    search_order: str = "weight_first"
    accept: str = "best"
    grad_loss: str = "auto"
    split_fp_operand: bool = True
    search_init: str = "max"

    def __post_init__(self) -> None:
        for key, choices in (("search_inputs", SEARCH_INPUTS), ("search_metric", SEARCH_METRICS),
                             ("weight_granularity", WEIGHT_GRANULARITIES),
                             ("operand_granularity", OPERAND_GRANULARITIES), ("search_order", SEARCH_ORDERS),
                             ("accept", ACCEPTS), ("grad_loss", GRAD_LOSSES), ("search_init", SEARCH_INITS),
                             ("alpha_grid", ALPHA_GRIDS)):
            if getattr(self, key) not in choices:
                raise ValueError(f"{key}={getattr(self, key)!r}; choose one of {choices}")
        if self.search_candidates < 1 or self.search_rounds < 0 or not 0 < self.alpha_min <= self.alpha_max:
            raise ValueError("need search_candidates >= 1, search_rounds >= 0 and 0 < alpha_min <= alpha_max")
        inert = self.inert_keys()
        if inert:
            raise ValueError(f"{', '.join(f'{k}={getattr(self, k)!r}' for k in inert)} would change nothing: "
                             + ("search_rounds=0 runs no search; set method.search_rounds (PTQ4ViT: 3) or drop them "
                                 "(a sweep over search_rounds runs 0 as a command of its own)"
                                if self.search_rounds == 0 else
                                f"grad_loss weights only search_metric=hessian (here {self.search_metric!r}); drop it"))

    def inert_keys(self) -> list[str]:
        """The search keys set away from their defaults that the configured search never reads: all
        of them without a search (search_rounds=0), grad_loss without the hessian metric. Refused,
        so that a sweep over them does not record identical runs under different settings."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [f.name for f in dataclasses.fields(SearchConfig)
                   if f.name != "search_rounds" and getattr(self, f.name) != defaults[f.name]]
        if self.search_rounds == 0:
            return changed
        return ["grad_loss"] if "grad_loss" in changed and self.search_metric != "hessian" else []

    def alphas(self, bits: int) -> torch.Tensor:
        """The candidates' multiples of a `bits`-bit quantizer's min-max range (see `alpha_grid`)."""
        if self.alpha_grid == "linspace":
            return torch.linspace(self.alpha_min, self.alpha_max, self.search_candidates)
        i = torch.arange(self.search_candidates, dtype=torch.float64)
        released = self.alpha_min + (self.alpha_max - self.alpha_min) * i / self.search_candidates
        return (released * released_step_factor(2 ** (bits - 1) - 1)).float()


def output_grads(model: nn.Module, calib: torch.Tensor, chunk_size: int,
                 loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 layers: Optional[list[nn.Module]] = None) -> dict[nn.Module, torch.Tensor]:
    """dL/dO of the output of `layers` (None: every quantizable layer) on the FP model (see the
    module docstring); `loss` maps a chunk of `calib` to the scalar L (None: cross-entropy of
    model(x) against its top-1). A layer must run once per forward (a detector's RPN convs run
    once per FPN level: they lie outside its units, which are what the search passes)."""
    if layers is None:
        layers = quant_layers(model)
    parts: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in layers}

    def fwd_hook(mod: nn.Module, _args: Any, out: torch.Tensor) -> None:
        out.register_hook(lambda g: parts[mod].append(g.detach()))

    with params_frozen(model), quant_disabled(model), torch.enable_grad(), \
            hooks_removed_after([m.register_forward_hook(fwd_hook) for m in layers]):
        for x in split_chunks(calib, chunk_size):
            x = x.clone().requires_grad_(True)
            if loss is not None:
                loss(x).backward()
                continue
            logits = model(x)
            F.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum").backward()
    return {m: torch.cat(g) for m, g in parts.items() if g}


class UnitGradients:
    """dL/dO of each unit's layers on the FP model, for a classifier whose `units` chain from the
    images to the logits (module docstring, step 1). Memory: one chunk's unit outputs, dL/d(each
    unit's output) over the calibration batch, one unit's autograd graph and one layer's
    gradients at a time.

    Ask `layer_grad` for a unit's layers, then call `unit_done`, for every unit in forward order:
    it moves the chunks' FP stream on to the next unit's input."""

    def __init__(self, model: nn.Module, units: list[Unit], calib: torch.Tensor, chunk_size: int,
                 grad_loss: str = "ce"):
        self.model, self.units = model, units
        self._inputs = split_chunks(calib, chunk_size)  # each chunk's FP input of the next unit
        self._next = 0
        with params_frozen(model), quant_disabled(model):
            self._targets = self._kl_targets(calib) if grad_loss == "kl" else None
            self._out_grads = self._reverse_sweep()

    @torch.no_grad()
    def _kl_targets(self, calib: torch.Tensor) -> list[torch.Tensor]:
        """Per chunk: the FP softmax of the whole batch's single pass (the released `raw_pred`)."""
        x = calib
        for unit in self.units:
            x = unit.forward(x)
        return list(F.softmax(x, dim=-1).split([len(c) for c in self._inputs]))

    def _loss(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        if self._targets is None:
            return F.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum")
        return F.kl_div(F.log_softmax(logits, dim=-1), self._targets[k], reduction="batchmean")

    def _reverse_sweep(self) -> list[list[torch.Tensor]]:
        """Per unit, per chunk: dL/d(the unit's output), by backpropagating unit by unit from the
        logits with each unit's graph rebuilt from its saved input (activation checkpointing)."""
        out: list[list[torch.Tensor]] = [[] for _ in self.units]
        for c, x in enumerate(self._inputs):
            with torch.no_grad():
                ins = [x]
                for unit in self.units[:-1]:
                    ins.append(unit.forward(ins[-1]))
                logits = self.units[-1].forward(ins[-1]).requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(self._loss(logits, c), logits)
                for k in range(len(self.units) - 1, -1, -1):
                    out[k].append(g)
                    if k:
                        xk = ins[k].detach().requires_grad_(True)
                        (g,) = torch.autograd.grad(self.units[k].forward(xk), xk, g)
        return out

    def layer_grad(self, unit: Unit, layer: nn.Module) -> Optional[torch.Tensor]:
        """dL/dO of `layer`'s output (its first call in `unit`) over the calibration batch, from
        the unit's graph alone, backpropagated only as far as that output (None: the loss does not
        depend on it). One layer's at a time: a block's every layer's gradients (63 MB for DeiT-T
        at 32 images) would sit beside the first layer's search."""
        k = self._unit_index(unit)
        parts: list[torch.Tensor] = []
        out: list[torch.Tensor] = []  # the layer's output in this chunk's pass (its first call)

        def keep_first(_mod: nn.Module, _args: Any, o: torch.Tensor) -> None:
            if not out:
                out.append(o)

        with params_frozen(self.model), quant_disabled(self.model), torch.enable_grad(), \
                hooks_removed_after([layer.register_forward_hook(keep_first)]):
            for x, g in zip(self._inputs, self._out_grads[k]):
                out.clear()
                y = unit.forward(x.detach().requires_grad_(True))
                if not out:
                    return None
                (grad,) = torch.autograd.grad(y, out[0], g, allow_unused=True)
                if grad is None:
                    return None
                parts.append(grad)
        return torch.cat(parts)

    def unit_done(self, unit: Unit) -> None:
        """Free `unit`'s output gradients and move the chunks on to the next unit's input."""
        k = self._unit_index(unit)
        self._out_grads[k] = []
        with quant_disabled(self.model), torch.no_grad():
            self._inputs = [unit.forward(x) for x in self._inputs]
        self._next += 1

    def _unit_index(self, unit: Unit) -> int:
        k = self._next
        if k >= len(self.units) or self.units[k] is not unit:
            raise RuntimeError("UnitGradients: pass the units in forward order, each once (unit_done moves on)")
        return k


def _score(out: torch.Tensor, target: torch.Tensor, grad2: Optional[torch.Tensor], metric: str,
           channel_dim: Optional[int]) -> torch.Tensor:
    """Distance to minimise: a scalar, or one per output channel when `channel_dim` is set;
    `grad2` = (dL/dO)^2, the Hessian weighting. `out` (a fresh layer output) is overwritten by the
    squared error, so that a candidate's score holds no second output-sized tensor."""
    if metric == "cosine":
        if channel_dim is None:
            return -F.cosine_similarity(out.flatten(1), target.flatten(1), dim=1).mean()
        o = out.movedim(channel_dim, 0).flatten(1)
        t = target.movedim(channel_dim, 0).flatten(1)
        return -F.cosine_similarity(o, t, dim=1)
    d = out.sub_(target).pow_(2)
    if metric == "hessian" and grad2 is not None:
        d.mul_(grad2)
    if channel_dim is None:
        return d.sum()
    return d.movedim(channel_dim, 0).flatten(1).sum(1)


def _candidates(q: Quantizer, x: torch.Tensor, cfg: SearchConfig) -> list[Any]:
    """Parameter sets for quantizer `q` seeing `x`; [] = not searched. A kind takes part by
    offering `search_candidates(x, alphas)`, `search_params()` and `apply_search_params(p)`
    (uniform, twin uniform, V-2SF, O-2SF); the others keep their calibration."""
    return q.search_candidates(x, cfg.alphas(q.bits)) if hasattr(q, "search_candidates") else []


def _search_tensor(q: Quantizer, x: torch.Tensor, run, target, grad2, cfg: SearchConfig) -> None:
    cands = _candidates(q, x, cfg)
    if not cands:
        return
    best, best_err = q.search_params(), math.inf
    if cfg.accept == "improve":
        best_err = float(_score(run(), target, grad2, cfg.search_metric, None))
    for c in cands:
        q.apply_search_params(c)
        err = float(_score(run(), target, grad2, cfg.search_metric, None))
        if err < best_err:
            best, best_err = c, err
    q.apply_search_params(best)


def _pick_per_group(q: UniformQuantizer, axis: int, lo: torch.Tensor, hi: torch.Tensor, run, target, grad2,
                    cfg: SearchConfig, channel_dim: int, groups: int) -> None:
    """Alpha per group of rows of the quantizer's `axis` (each group's rows share its range
    [lo, hi], given per row): the scores per output channel `channel_dim` summed over each group,
    every group keeping its own best (exact: the groups' outputs are disjoint)."""

    def grouped(err: torch.Tensor) -> torch.Tensor:
        return err.reshape(groups, -1).sum(1).repeat_interleave(err.numel() // groups)

    rows = lo.numel()
    best_s = q.scale.expand(rows).clone() if q.scale.dim() == 0 else q.scale.clone()
    best_z = q.zero_point.expand(rows).clone() if q.zero_point.dim() == 0 else q.zero_point.clone()
    # the current parameters compete only where they already have the searched granularity (a
    # per-channel calibration kept by a per-tensor search would leave neither)
    shared = bool((best_s.reshape(groups, -1) == best_s.reshape(groups, -1)[:, :1]).all())
    if cfg.accept == "improve" and shared:
        best_err = grouped(_score(run(), target, grad2, cfg.search_metric, channel_dim))
    else:
        best_s, best_z = torch.ones(rows), torch.zeros(rows)
        best_err = torch.full((rows,), math.inf)
    for a in cfg.alphas(q.bits):
        s, z = params_from_range(a * lo, a * hi, q.bits, q.symmetric)
        q.set_params(s, z, axis)
        err = grouped(_score(run(), target, grad2, cfg.search_metric, channel_dim))
        better = err < best_err
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        best_err = torch.where(better, err, best_err)
    q.set_params(best_s, best_z, axis)


def _search_weight(layer: nn.Module, run, target, grad2, cfg: SearchConfig, blocks: int = 1) -> None:
    """Alpha per output channel of a per-channel uniform weight quantizer, or (`weight_granularity
    = tensor`, not a conv) per weight tensor / per each of its `blocks` row blocks (a fused qkv)."""
    wq = layer.weight_quantizer
    if not isinstance(wq, UniformQuantizer) or wq.channel_axis != 0:
        return
    lo, hi, groups = _weight_ranges(layer, cfg, blocks)
    _pick_per_group(wq, 0, lo, hi, run, target, grad2, cfg, 1 if isinstance(layer, QuantConv2d) else -1, groups)


def _weight_ranges(layer: nn.Module, cfg: SearchConfig, blocks: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per output row: the min and max of the row's group (a row, a block of rows or the whole
    weight, by `weight_granularity`; a conv always per row), and the number of groups."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    groups = w.shape[0] if isinstance(layer, QuantConv2d) or cfg.weight_granularity == "channel" else blocks
    per_row = w.shape[0] // groups
    return (w.reshape(groups, -1).min(1).values.repeat_interleave(per_row),
            w.reshape(groups, -1).max(1).values.repeat_interleave(per_row), groups)


def released_step_factor(top: int) -> float:
    """The release's step max / (top + 0.5) as a multiple of the min-max step max / top (`top`:
    the largest code, 2^(b-1) - 1 for signed b-bit codes)."""
    return top / (top + 0.5)


def _released_alpha(q: Quantizer) -> float:
    """The alpha that puts `q`'s step at the released initial max / (2^(b-1) - 0.5)."""
    return released_step_factor(q.levels - 1 if isinstance(q, TwinUniformQuantizer) else q.qmax)


def _init_at_max(layer: nn.Module, inputs: tuple, cfg: SearchConfig, blocks: int) -> None:
    """`search_init=max`: every uniform and twin uniform quantizer the search handles starts at the
    released initial step."""
    pairs = ((layer.a_quantizer, inputs[0]), (layer.b_quantizer, inputs[1])) if isinstance(layer, QuantMatMul) \
        else ((layer.input_quantizer, inputs[0]),)
    for q, x in pairs:
        if q is None:
            continue
        if isinstance(q, TwinUniformQuantizer) and q.mode == "softmax":
            q.apply_search_params({"split": torch.tensor(RELEASED_INITIAL_SPLIT)})
        elif cfg.operand_granularity == "head" and isinstance(layer, QuantMatMul) and (heads := _head_ranges(q, x)):
            a = _released_alpha(q)
            q.set_params(*params_from_range(a * heads[0], a * heads[1], q.bits, q.symmetric), 1)
        elif isinstance(q, (UniformQuantizer, TwinUniformQuantizer)) and not getattr(q, "per_channel", False):
            q.apply_search_params(q.search_candidates(x, torch.tensor([_released_alpha(q)]))[0])
        # other kinds (TSPTQ-ViT's two-scale ones) have no released initial step: they keep theirs
    wq = getattr(layer, "weight_quantizer", None)
    if isinstance(wq, UniformQuantizer) and wq.channel_axis == 0:
        lo, hi, _ = _weight_ranges(layer, cfg, blocks)
        a = _released_alpha(wq)
        wq.set_params(*params_from_range(a * lo, a * hi, wq.bits, wq.symmetric), 0)


def _head_ranges(q: Quantizer, x: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Min and max of each attention head (axis 1 of a (batch, heads, tokens, dim) operand) for a
    per-tensor (or already per-head) uniform quantizer; None for other kinds and shapes, which
    the search handles per tensor."""
    if type(q) is not UniformQuantizer or x.dim() != 4 or q.channel_axis not in (None, 1):
        return None
    xh = x.transpose(0, 1).reshape(x.shape[1], -1)
    return xh.min(1).values, xh.max(1).values


def _search_heads(q: Quantizer, x: torch.Tensor, run, target, grad2, cfg: SearchConfig) -> bool:
    """One alpha per attention head (axis 1 of the operand and of the product); False where
    `_head_ranges` has none (searched per tensor)."""
    heads = _head_ranges(q, x)
    if heads is None:
        return False
    _pick_per_group(q, 1, heads[0], heads[1], run, target, grad2, cfg, 1, x.shape[1])
    return True


def search_layer(layer: nn.Module, inputs: tuple, target: torch.Tensor, grad2: Optional[torch.Tensor],
                 cfg: SearchConfig, weight_blocks: int = 1) -> None:
    """Alternating rounds over the layer's two quantizers (see the module docstring); `grad2`:
    (dL/dO)^2 of the layer's output, used by the hessian metric; `weight_blocks`: row blocks of
    the weight that `weight_granularity=tensor` scales apart (3 for a fused qkv)."""

    def run() -> torch.Tensor:
        return layer(*inputs)

    if cfg.search_metric != "hessian":
        grad2 = None

    def operand(q: Optional[Quantizer], x: torch.Tensor, other: Optional[Quantizer]) -> None:
        if q is None:
            return
        if cfg.operand_granularity == "head" and _search_heads(q, x, run, target, grad2, cfg):
            return
        fp_other = cfg.split_fp_operand and other is not None and getattr(q, "mode", None) == "softmax"
        with switched([other] if fp_other else [], False):
            _search_tensor(q, x, run, target, grad2, cfg)

    def linear_input() -> None:
        if layer.input_quantizer is not None:
            _search_tensor(layer.input_quantizer, inputs[0], run, target, grad2, cfg)

    def weight() -> None:
        _search_weight(layer, run, target, grad2, cfg, weight_blocks)

    if cfg.search_init == "max" and cfg.search_rounds > 0:
        _init_at_max(layer, inputs, cfg, weight_blocks)
    for _ in range(cfg.search_rounds):
        if isinstance(layer, QuantMatMul):
            operand(layer.a_quantizer, inputs[0], layer.b_quantizer)
            operand(layer.b_quantizer, inputs[1], None)
        else:
            for step in ((weight, linear_input) if cfg.search_order == "weight_first" else (linear_input, weight)):
                step()


def _qkv_layers(module: nn.Module) -> set[int]:
    """ids of the fused qkv Linears (three row blocks: q, k, v) of the attention modules in `module`."""
    return {id(m.qkv) for m in module.modules() if isinstance(getattr(m, "qkv", None), QuantLinear)}


@torch.no_grad()
def search_model(model: nn.Module, units: list[Unit], calib: torch.Tensor, cfg: SearchConfig,
                 loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict[str, Any]:
    """Hessian-guided (or mse / cosine) search of every layer's quantizers, unit by unit over
    `units` (the model's units in forward order).

    All quantizers must be calibrated already (their ranges are the starting point and stay for
    the kinds the search does not handle). Returns counts for the record."""
    if not units:
        raise ValueError("search_model needs the model's units in forward order (QuantizedModel.units); got none")
    x_q, x_fp = calib, calib
    searched = 0
    hessian = cfg.search_metric == "hessian"
    if hessian and cfg.grad_loss == "kl" and loss is not None:
        raise ValueError("grad_loss=kl needs a classifier (the FP prediction's KL); use grad_loss=ce or auto here")
    grad_loss = "kl" if cfg.grad_loss == "auto" else cfg.grad_loss  # a detector (`loss`) ignores it
    unit_grads = UnitGradients(model, units, calib, cfg.chunk_size, grad_loss) if hessian and loss is None else None
    for unit in progress_bar(units, desc="hessian search", unit="unit"):
        grads = {}  # a detector's: this unit's layers' gradients, from one whole-model backward
        if hessian and unit_grads is None:
            grads = output_grads(model, calib, cfg.chunk_size, loss,
                                 quant_layers(unit.module))
        with quant_disabled(model):  # one FP pass: the layers' call order, the next unit's input
            order, x_next = forward_order(unit, x_fp)
        qkv = _qkv_layers(unit.module)
        for layer in order:
            with quant_disabled(model):
                fp_in, fp_out = layer_call(unit.forward, layer, x_fp)
            inputs = fp_in if cfg.search_inputs == "fp" else layer_call(unit.forward, layer, x_q, output=False)[0]
            grad = unit_grads.layer_grad(unit, layer) if unit_grads is not None else grads.pop(layer, None)
            search_layer(layer, inputs, fp_out, None if grad is None else grad.pow_(2), cfg,  # squared in place
                         3 if id(layer) in qkv else 1)
            searched += 1
            del fp_in, fp_out, inputs, grad
        if unit_grads is not None:
            unit_grads.unit_done(unit)
        if cfg.search_inputs != "fp":
            x_q = unit.forward(x_q)
        x_fp = x_next
    return {"searched_layers": searched, "search_metric": cfg.search_metric}
