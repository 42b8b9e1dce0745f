"""The steps methods are composed of. A method's `steps()` lists them in order; `Method.quantize`
calls each as `step(qm, calib)` and merges the statistics they return into `method_stats`.

- Calibrate: one progressive calibration pass (every uncalibrated enabled quantizer fits itself).
- WeightsFP: run inner steps with the weight quantizers off (activation side first, weights later).
- Reparameterize: per-channel post-LN quantizers -> per-tensor, folded into the LayerNorm and the
  next Linear, with a shared-scale rule (MeanScale: RepQ-ViT; MOSF: DopQ-ViT).
- Reconstruct: block reconstruction (ptqbench.algorithms.reconstruction).
- ReluMLPReconstruct: APHQ-ViT's GELU -> ReLU MLP stage, against the FP teacher.
- WithFPTeacher: run inner steps with an FP copy of the model taken first, which later
  reconstruction stages take their FP inputs and targets from (I&S-ViT trains the FP weights).
- GPTQSolve / InstallDualUniform / ErrorReduction: weight solvers, unit by unit (GPTQ; ERQ).
- HessianSearch: PTQ4ViT's Hessian-guided scale search.
- GridSearch: the AdaLog / APHQ-ViT family's output-MSE grid search of (scale, zero point) pairs.
- TokenWiseScales: FIMA-Q's one activation scale per token, after the search.
- Timed: inner steps, plus their wall time under a key.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import nn

from ptqbench.algorithms.error_reduction import SOLVERS, gptq, ridge_correction, wqer
from ptqbench.algorithms.grid_search import GridSearchConfig, search_model as grid_search_model
from ptqbench.algorithms.hessian_search import SearchConfig, search_model
from ptqbench.algorithms.mlp_recon import MLPReconConfig, reconstruct_mlps, relu_mlps
from ptqbench.algorithms.reconstruction import FPTeacher, ReconConfig, reconstruct
from ptqbench.algorithms.reparam import SharedScaleFn, mad_inliers, mean_scale, mosf_scale, reparameterize_all
from ptqbench.algorithms.token_scales import expand_token_scales
from ptqbench.algorithms.streaming import GramStats, collect_grams, run_unit, split_chunks, unit_layers, weights_fp
from ptqbench.heap import large_blocks_reused
from ptqbench.methods.base import Step
from ptqbench.models.adapter import QuantizedModel
from ptqbench.models.attention import timm_fp_attention
from ptqbench.models.families import FAMILIES
from ptqbench.models.structure import BLOCK, ReparamPair
from ptqbench.quant import roles
from ptqbench.quant.calibration import calibrate, quant_disabled, quantizers, switched
from ptqbench.quant.dual_uniform import DualUniformQuantizer
from ptqbench.quant.modules import QuantConv2d, QuantLinear, drop_cached_weights
from ptqbench.quant.ranges import RangeSearch


def unit_input(qm: QuantizedModel, calib: Any) -> torch.Tensor:
    """The first unit's input from the calibration input (the images; a detector's batch dict
    through its data preprocessor), as the model's family says."""
    return FAMILIES[qm.family].unit_input(qm.model, calib)


@torch.no_grad()
def fit_weights_outside_units(qm: QuantizedModel) -> dict[str, int]:
    """Fit (round to nearest) the weight quantizers that the unit-by-unit weight solvers never
    reach: a detector's neck and heads lie outside its units (the backbone chain). A classifier
    has none."""
    inside = {id(m) for unit in qm.units for m in unit.module.modules()}
    fitted = 0
    for m in qm.model.modules():
        wq = getattr(m, "weight_quantizer", None)
        if isinstance(m, (QuantLinear, QuantConv2d)) and id(m) not in inside and wq is not None and wq.enabled \
                and not wq.calibrated:
            wq.calibrate(m.weight.detach())
            fitted += 1
    return {"weights_fitted_outside_units": fitted} if fitted else {}


def run_steps(steps: Iterable[Step], qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
    """Run `steps` in order; their statistics merged in that order."""
    stats: dict[str, Any] = {}
    for step in steps:
        stats.update(step(qm, calib))
    return stats


# -- calibration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibrate:
    """One progressive calibration pass, streamed over the model's units when it has them
    (`ptqbench.quant.calibration.calibrate`); records how many quantizers it fitted under `key`.
    `images`: only the first that many calibration images (I&S-ViT fits on the first 64)."""

    desc: str = "calibrate"
    key: str = "calibrated_quantizers"
    images: Optional[int] = None

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        if self.images is not None and isinstance(calib, torch.Tensor):
            calib = calib[: self.images]
        # streaming needs units that reproduce the whole forward from the images; a detector's
        # calibration input is a batch dict and its units are the backbone only: one pass
        units = qm.units if isinstance(calib, torch.Tensor) else None
        return {self.key: calibrate(qm.model, calib, desc=self.desc, units=units)}


# After a reparameterization: the changed Linears' weight quantizers fit the new weights.
RECALIBRATE = Calibrate(desc="recalibrate", key="recalibrated_quantizers")


@dataclass(frozen=True)
class WeightsFP:
    """Run `steps` with every weight quantizer off, for methods that calibrate the activation side
    on FP weights and choose the weights themselves afterwards (ERQ, GPTQ)."""

    steps: tuple[Step, ...]

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        with switched((q for q in quantizers(qm.model).values() if q.role == roles.WEIGHT), False):
            return run_steps(self.steps, qm, calib)


@dataclass(frozen=True)
class Timed:
    """Run `steps`; their wall time in seconds goes under `key`, after their statistics."""

    key: str
    steps: tuple[Step, ...]

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        t0 = time.perf_counter()
        stats = run_steps(self.steps, qm, calib)
        stats[self.key] = round(time.perf_counter() - t0, 3)
        return stats


# -- scale reparameterization ----------------------------------------------------------------------
@dataclass(frozen=True)
class MeanScale:
    """RepQ-ViT's shared scale: the mean of the channel scales."""

    def scale_fn(self) -> SharedScaleFn:
        return mean_scale

    def stats(self, pairs: list[ReparamPair]) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class MOSF:
    """DopQ-ViT's shared scale: the median of the channel scales (`statistic="median"`) or the mean
    of the inlier channel scales, outliers lying more than `k` median (or mean, `deviation`)
    absolute deviations from the median (`"inlier_mean"`)."""

    k: float = 3.0
    deviation: str = "median"
    statistic: str = "inlier_mean"

    def scale_fn(self) -> SharedScaleFn:
        return mosf_scale(self.k, self.deviation, self.statistic)

    def stats(self, pairs: list[ReparamPair]) -> dict[str, Any]:
        if self.statistic == "median":
            return {}
        outliers = sum(int((~mad_inliers(p.linear.input_quantizer.scale.reshape(-1), self.k, self.deviation)).sum())
                       for p in pairs)
        return {"mosf_outlier_channels": outliers}


SharedScaleRule = MeanScale | MOSF


@dataclass(frozen=True)
class Reparameterize:
    """Every calibrated per-channel post-LN quantizer becomes per-tensor (shared scale from `rule`,
    zero point rounded when `round_zero_point`), the factors folded into the LayerNorm and the next
    Linear (ptqbench.algorithms.reparam; `exact_padding` for Swin's window padding, `arithmetic`
    float64 or the released float32)."""

    rule: SharedScaleRule = MeanScale()
    round_zero_point: bool = True
    exact_padding: bool = True
    arithmetic: str = "float64"

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        stats = self.rule.stats(qm.reparam_pairs)
        done = reparameterize_all(qm.reparam_pairs, self.round_zero_point, self.rule.scale_fn(),
                                  exact_padding=self.exact_padding, arithmetic=self.arithmetic)
        stats["reparameterized_pairs"] = len(done)
        return stats


# -- block reconstruction --------------------------------------------------------------------------
@dataclass(frozen=True)
class Reconstruct:
    """Block reconstruction with the engine config `cfg`; per-unit details trimmed to losses and
    seconds, plus the iterations, batch size and learned kinds that ran; every key starts with
    `prefix` (a recipe with two reconstruction stages keeps both)."""

    cfg: ReconConfig
    prefix: str = ""

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        x = unit_input(qm, calib)
        with large_blocks_reused():  # ptqbench.heap: about 1.8x faster than fresh mappings
            stats = reconstruct(qm.model, qm.units, x, self.cfg, qm.fp_targets, qm.fp_teacher)
        stats["recon_iters"] = self.cfg.iters
        stats["recon_batch_size"] = min(self.cfg.batch_size, x.shape[0])
        stats["recon_learn"] = list(self.cfg.learn)
        return {f"{self.prefix}{k}": v for k, v in stats.items()}


@dataclass(frozen=True)
class ReluMLPReconstruct:
    """APHQ-ViT's MLP stage (ptqbench.algorithms.mlp_recon): every block MLP's GELU becomes a ReLU
    and fc1/fc2 are retrained against the FP teacher's GELU MLP, quantization off. Needs
    `qm.fp_teacher` (run it inside WithFPTeacher, before anything changes the weights)."""

    cfg: MLPReconConfig

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        teacher = qm.fp_teacher
        if teacher is None:
            raise RuntimeError("ReluMLPReconstruct needs an FP teacher: run it inside WithFPTeacher")
        relu_mlps(qm.units)
        with quant_disabled(qm.model), quant_disabled(teacher.model), large_blocks_reused():
            return reconstruct_mlps(qm.units, teacher.units, unit_input(qm, calib), self.cfg)


@dataclass(frozen=True)
class WithFPTeacher:
    """Run `steps` with `qm.fp_teacher` set to an FP copy of the model taken now (quantization off
    in it), so that every Reconstruct among them trains against the FP model as it was before any
    of them changed the weights; the copy is dropped afterwards. `timm_attention`: the copy's
    attention runs as timm built it (fused where timm fuses), as in a release whose teacher is the
    plain timm model (ptqbench.models.attention.timm_fp_attention)."""

    steps: tuple[Step, ...]
    timm_attention: bool = False

    def teacher_of(self, qm: QuantizedModel) -> FPTeacher:
        """The FP copy of `qm`'s model as it is now, and its units."""
        teacher = copy.deepcopy(qm.model)
        if self.timm_attention:
            timm_fp_attention(teacher)
        return FPTeacher(teacher, FAMILIES[qm.family].units(teacher))

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        qm.fp_teacher = self.teacher_of(qm)
        try:
            return run_steps(self.steps, qm, calib)
        finally:
            qm.fp_teacher = None


# -- Hessian-guided search -------------------------------------------------------------------------
@dataclass(frozen=True)
class HessianSearch:
    """PTQ4ViT's search of each layer's scales, layer by layer in forward order."""

    cfg: SearchConfig

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        family = FAMILIES[qm.family]
        return search_model(qm.model, qm.units, unit_input(qm, calib), self.cfg, family.output_loss(qm.model))


# -- output-MSE grid search -----------------------------------------------------------------------
@dataclass(frozen=True)
class GridSearch:
    """The AdaLog / APHQ-ViT family's calibration: each layer's (scale, zero point) pairs from a grid
    by output MSE on FP inputs, the post-LN pairs reparameterized on the way
    (ptqbench.algorithms.grid_search); on the first `images` calibration images (None: all)."""

    cfg: GridSearchConfig
    exact_padding: bool = True
    images: Optional[int] = None

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        x = unit_input(qm, calib)
        if self.images is not None:
            x = x[: self.images]
        with large_blocks_reused():  # ptqbench.heap: about 2x faster than fresh mappings
            stats = grid_search_model(qm.model, qm.units, x, self.cfg, qm.reparam_pairs, self.exact_padding)
        return {**stats, "grid_search_images": int(x.shape[0])}


@dataclass(frozen=True)
class TokenWiseScales:
    """FIMA-Q's token-wise activation scales (ptqbench.algorithms.token_scales), after calibration."""

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        return {"token_wise_scales": expand_token_scales(qm.model, calib[:1])}


# -- weight solvers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPTQSolve:
    """GPTQ on every Linear and the patch-embedding conv, unit by unit: each unit is fed the outputs
    of the already-quantized units (its own weights FP while H = E[x x^T] accumulates), the weight
    quantizer is fitted, then the columns are quantized with error propagation."""

    blocksize: int = 128
    percdamp: float = 0.01
    act_order: bool = False
    chunk_size: int = 8

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        chunks = split_chunks(unit_input(qm, calib), self.chunk_size)
        layers_done, loss = 0, 0.0
        for unit in qm.units:
            layers = unit_layers(qm.model, unit)
            with weights_fp(layers):  # inputs from quantized earlier units, this unit's weights FP
                grams, _ = collect_grams(unit, chunks, layers, keep_outputs=False)
            for name, layer in layers.items():
                wq = layer.weight_quantizer
                if wq is None:
                    continue
                wq.calibrate(layer.weight.detach())
                q, layer_loss = gptq(layer.weight_matrix(), grams.pop(name).second_moment(), layer.weight_grid(),
                                     self.blocksize, self.percdamp, self.act_order)
                layer.set_weight_matrix(q)
                layers_done += 1
                loss += layer_loss
            chunks = run_unit(unit, chunks)  # quantized outputs feed the next unit
            drop_cached_weights(unit.module)  # not visited again; a cached copy of every weight would outlive its unit
        return {"gptq_layers": layers_done, "gptq_loss": round(loss, 6), **fit_weights_outside_units(qm)}


def block_input_linears(qm: QuantizedModel) -> list[QuantLinear]:
    """The Linears right after a LayerNorm inside each transformer block (qkv and fc1: the layers
    ERQ gives dual uniform weights), as the model's family lays out its units and roles."""
    return [lin for unit in qm.units if unit.kind == BLOCK for name, lin in unit_layers(qm.model, unit).items()
            if isinstance(lin, QuantLinear) and qm.linear_roles.get(name) == roles.POST_LN]


@dataclass(frozen=True)
class InstallDualUniform:
    """Replace the weight quantizer of every block's qkv and fc1 with a dual uniform one (two
    per-row scales, ERQ TPAMI); `enabled=False` installs none (the count stays in the record)."""

    bits: int
    divisor: int
    percentile: float
    search: RangeSearch
    enabled: bool = True
    tie_break: str = "column"

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        if not self.enabled:
            return {"dual_uniform_layers": 0}
        layers = [lin for lin in block_input_linears(qm) if lin.weight_quantizer is not None]
        for lin in layers:
            dq = DualUniformQuantizer(self.bits, roles.WEIGHT, self.divisor, self.percentile, self.search, self.tie_break)
            dq.qname = lin.weight_quantizer.qname
            lin.weight_quantizer = dq.to(lin.weight.device)
        return {"dual_uniform_layers": len(layers)}


@dataclass(frozen=True)
class ErrorReduction:
    """ERQ's Aqer then Wqer per layer, unit by unit, every layer fed its own FP input (Gram
    statistics streamed through the FP model; ptqbench/methods/erq.py has the recipe)."""

    # no defaults: the method's config (ERQConfig) is the one source of them
    aqer: bool
    wqer: bool
    rounding_refinement: bool
    refine_steps: int
    coe: float
    head_lambda: float
    conv_lambda_factor: float
    chunk_size: int
    solve: str

    def _reduce_layer(self, layer: nn.Module, role: str, st: GramStats, counters: dict[str, int]) -> None:
        is_conv = isinstance(layer, QuantConv2d)
        w_aug = torch.cat([layer.weight_matrix(), layer.bias_vector()[:, None]], dim=1)
        if self.aqer and not is_conv:
            lam = self.head_lambda if role == roles.HEAD_IN else 0.1 * self.coe
            w_aug = ridge_correction(st.G, st.C, w_aug, lam, SOLVERS[self.solve])
            layer.set_weight_matrix(w_aug[:, :-1], w_aug[:, -1])
            counters["aqer_layers"] += 1
        wq = layer.weight_quantizer
        if wq is None:
            return
        wq.calibrate(layer.weight.detach())
        if self.wqer:
            lam = 0.1 * self.coe * (self.conv_lambda_factor if is_conv else 1.0)
            refine = self.rounding_refinement and not is_conv
            w_aug, s = wqer(w_aug, st.G, st.rows, layer.weight_grid(), lam, refine, self.refine_steps,
                            SOLVERS[self.solve])
            layer.set_weight_matrix(w_aug[:, :-1], w_aug[:, -1])
            counters["wqer_layers"] += 1
            counters["wqer_rounds"] += s.rounds
            counters["refine_flips"] += s.flips

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        counters = {"aqer_layers": 0, "wqer_layers": 0, "wqer_rounds": 0, "refine_flips": 0}
        chunks = split_chunks(unit_input(qm, calib), self.chunk_size)
        names_roles = qm.linear_roles
        for unit in qm.units:
            layers = unit_layers(qm.model, unit)
            with quant_disabled(qm.model):  # every layer is fed its own FP input
                grams, chunks = collect_grams(unit, chunks, layers, cross=self.aqer)
            for name, layer in layers.items():
                self._reduce_layer(layer, names_roles.get(name, roles.OTHER_IN), grams.pop(name), counters)
        return {**counters, **fit_weights_outside_units(qm)}


def optional(condition: bool, *steps: Step) -> tuple[Step, ...]:
    """`steps` when `condition`, else none: for steps a config knob switches off."""
    return steps if condition else ()


def walk_steps(steps: Iterable[Step]) -> Iterator[Step]:
    """Every step in run order: each wrapping step (WithFPTeacher, WeightsFP, Timed), then the
    steps it wraps."""
    for s in steps:
        yield s
        yield from walk_steps(getattr(s, "steps", ()))


__all__ = ["Calibrate", "ErrorReduction", "GPTQSolve", "GridSearch", "HessianSearch", "InstallDualUniform", "MOSF", "MeanScale",
           "RECALIBRATE", "Reconstruct", "Reparameterize", "SharedScaleRule", "Timed", "WeightsFP", "WithFPTeacher",
           "optional",
           "run_steps", "walk_steps"]
