"""ERQ (Zhong et al., ICML 2024; TPAMI 2025): two-step error reduction, Aqer then Wqer.

Recipe, as the released code runs it (zysxmu/ERQ, `test_quant_expand.py`), re-derived on Gram
statistics so nothing is stored per layer but (fan_in + 1)^2 numbers:

1. RepQ-ViT activation quantizers (per-channel post-LN, log-sqrt2 post-softmax), calibrated in
   one pass with FP weights; scale reparameterization of the LayerNorm -> Linear pairs.
2. Per unit (embedding, each block, head), the calibration images stream through the *FP* model
   (each layer sees its own FP input X, not the quantized model's; the released code's
   "parallel" setting), accumulating G = [Q(X),1]^T [Q(X),1] and C = [Q(X),1]^T [X,1] per layer.
3. Aqer (every Linear; the patch-embedding conv is skipped, as released): ridge regression of the
   float output on the quantized input, beta = (G + lambda I)^-1 (C - G) [W, b]^T, lambda =
   0.1 * coe for block Linears and `head_lambda` for the head.
4. The weight quantizer is fitted on the updated weights: dual uniform (ERQ TPAMI) for qkv and
   fc1, per-channel uniform elsewhere.
5. Wqer (every Linear and the patch-embedding conv): repeatedly quantize the first half of the
   unquantized columns, refine their rounding (Linears only, as released), and compensate the
   remaining columns by ridge regression with lambda = 0.1 * coe (conv: 0.1 * coe * 10); the bias
   absorbs the last correction. The weights end exactly on the quantizer's grid.

Choices where the released code is silent or inconsistent (all knobs except the first):
- A Linear without a bias gets one, which Aqer and Wqer update like any other (the released code
  drops into a debugger on Swin's bias-less PatchMerging.reduction; with reparameterization it
  already has one).
- Swin's PatchMerging norm -> reduction pair is reparameterized like RepQ-ViT (the released ERQ
  has it commented out and leaves that input per-tensor).
- Wqer's lambda for the head follows the released code (0.1 * coe; its Aqer uses 0.1).
- The patch-embedding input stays FP (`patch_input_bits: null`), as released.
- Weight ranges: per row (per group for dual uniform), MSE over the released code's weight grid
  {0.97, ..., 0.99999, 1.0} (`weight_percentiles`); RepQ-ViT's code uses the activation grid for
  weights. At W3 the wider grid matters (it clips more).

The released arithmetic is the default, each a knob with ptqbench's exact variant beside it:
fractional z~ (`round_zero_point`), 1/sqrt(d) on the q-k product (`attention_scale`), the float32
fold (`reparam_arithmetic`), float32 `torch.inverse` solves (`solve`), the Counter order among
tied outlier columns (`dual_tie_break`). Together they moved ptqbench from +1.00/+1.08 to
+0.85/+0.47 (W4A4, seeds 0/1) and from +1.92 to +0.62 (W3A4) of the released code
(docs/anchors/erq/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ptqbench.algorithms.error_reduction import SOLVERS
from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.configs import ReparamConfig, reparam_activations
from ptqbench.methods.steps import (Calibrate, ErrorReduction, InstallDualUniform, Timed,
                                    WeightsFP, optional)
from ptqbench.quant.dual_uniform import TIE_BREAKS
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.spec import QuantPlan


# The released ERQ quantizer's per-row weight clipping grid (its activations keep RepQ-ViT's).
ERQ_WEIGHT_PERCENTILES = (0.97, 0.98, 0.99, 0.995, 0.9995, 0.9997, 0.9999, 0.99995, 0.99999, 1.0)


@dataclass(frozen=True)
class ERQConfig(ReparamConfig):
    """Attributes (besides RepQ-ViT's reparam / log_sqrt2 / round_zero_point / attention_scale /
    reparam_arithmetic, whose ERQ defaults are the released arithmetic: fractional z~, the scale on
    the q-k product, the float32 fold; docs/anchors/erq measures each against the release):
    aqer: activation-quantization error reduction (ridge update of W, b).
    wqer: weight-quantization error reduction (iterative quantize + compensate).
    rounding_refinement: ERQ's proxy-guided floor/ceil flips inside Wqer.
    refine_steps: step limit of the rounding refinement per row (released: 100).
    dual_uniform: two per-row scales for qkv and fc1 weights (ERQ TPAMI).
    dual_divisor: outlier-column group size = Cout // dual_divisor (released: 20).
    dual_percentile: a row's outliers lie beyond this percentile (released: 99).
    dual_tie_break: columns with equal outlier counts: "first_seen" (the released
        Counter.most_common order) or "column" (lower index first; quant.dual_uniform).
    coe: ridge strength knob, lambda = 0.1 * coe (released README: 10000 with 32 images; the
        code's default 20000 goes with 1024 images).
    head_lambda: Aqer's lambda for the classifier head (released: 0.1).
    conv_lambda_factor: Wqer's lambda for the patch-embedding conv is 0.1 * coe * this (released: 10).
    chunk_size: calibration images per streamed chunk (memory only; results do not depend on it
        beyond float summation order).
    solve: the linear solves of Aqer and Wqer: "inverse32" (the released float32 `torch.inverse`)
        or "cholesky64" (float64 Cholesky, pseudo-inverse when singular; docs/anchors/erq).
    """

    patch_input_bits: Optional[int] = None
    weight_percentiles: tuple[float, ...] = ERQ_WEIGHT_PERCENTILES
    aqer: bool = True
    wqer: bool = True
    rounding_refinement: bool = True
    refine_steps: int = 100
    dual_uniform: bool = True
    dual_divisor: int = 20
    dual_percentile: float = 99.0
    coe: float = 10000.0
    head_lambda: float = 0.1
    conv_lambda_factor: float = 10.0
    chunk_size: int = 8
    solve: str = "inverse32"
    dual_tie_break: str = "first_seen"
    round_zero_point: bool = False
    attention_scale: str = "product"
    reparam_arithmetic: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dual_tie_break not in TIE_BREAKS:
            raise ValueError(f"dual_tie_break={self.dual_tie_break!r}; choose one of {TIE_BREAKS}")
        if self.solve not in SOLVERS:
            raise ValueError(f"solve={self.solve!r}; choose one of {sorted(SOLVERS)}")
        for key in ("coe", "head_lambda", "conv_lambda_factor"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("refine_steps", "dual_divisor", "chunk_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


@register_method("erq", display="ERQ", cite="zhong2025erq", paper="ERQ")
class ERQ(Method):
    """ERQ; see the module docstring for the recipe and the choices made."""

    Config = ERQConfig
    blockwise = True

    def protocol_plan(self) -> QuantPlan:
        return self.config.plan(self.weight_spec(), reparam_activations(self, self.config))

    def steps(self) -> Sequence[Step]:
        c = self.config
        activation_side = WeightsFP((
            Calibrate(desc="calibrate activations"),
            *optional(c.reparam, c.reparameterize()),
        ))
        dual = InstallDualUniform(self.bits.w, c.dual_divisor, c.dual_percentile,
                                  RangeSearch(c.weight_search, c.weight_percentiles), enabled=c.dual_uniform,
                                  tie_break=c.dual_tie_break)
        reduce = ErrorReduction(c.aqer, c.wqer, c.rounding_refinement, c.refine_steps, c.coe, c.head_lambda,
                                c.conv_lambda_factor, c.chunk_size, c.solve)
        return (Timed("error_reduction_s", (activation_side, dual, reduce)),)
