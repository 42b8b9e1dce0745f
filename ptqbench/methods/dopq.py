"""DopQ-ViT (Yang et al., arXiv 2408.03291): TanQ for post-softmax, MOSF for the post-LayerNorm
reparameterization, on I&S-ViT's three-stage pipeline.

No code is public and the sources at hand (abstracts of every arXiv version, third-party summaries)
do not give the formulas, so what follows is ptqbench's reading, not a reproduction (sources and
reasoning in docs/methods/dopq.md):

1. `pipeline: ias` (default): I&S-ViT as released (ptqbench's `ias`, checked against its code),
   with TanQ in place of SULQ and MOSF in place of the mean shared scale: activations fitted with
   FP weights and every unit's FP weights trained; the reparameterization with the fractional
   mean zero point (so the shared scale changes the result); weights quantized and trained again.
   DopQ-ViT's margin over RepQ-ViT sits 0.3 points above I&S-ViT's, on this pipeline.
   `pipeline: engine` is ptqbench's earlier reading: one calibration pass, the reparameterization,
   then one AdaRound + LSQ reconstruction (`reconstruct`, the BlockReconConfig keys).
2. TanQ (`tanq`) on post-softmax: uniform codes in u = tan(theta (x - 1/2)) / tan(theta / 2),
   levels dense near 0 and 1, theta per layer from `tan_thetas` by the error of A @ V
   (`tan_metric: output`) or of the map (`attn`) (ptqbench.quant.tan). `tanq: false` uses
   RepQ-ViT's log-sqrt2 instead (the ablation).
3. MOSF (`mosf`): the shared scale of the per-channel -> per-tensor reparameterization is the
   median of the channel scales (`mosf_statistic: median`, the v2 abstract's wording), or the mean
   of the inlier channel scales, outliers being > `mosf_k` median absolute deviations from the
   median (`inlier_mean`, "MAD-guided" in v3). `mosf: false` = RepQ's mean. With an integer shared
   zero point the reparameterization is exact for *any* shared scale (docs), so MOSF can only
   matter where the fold is not exact: the fractional zero point of the I&S-ViT pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

from ptqbench.algorithms.reparam import DEVIATIONS, MOSF_STATISTICS
from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.configs import BlockReconConfig, SmoothOptimizationConfig, reparam_activations
from ptqbench.methods.ias import IAS_WEIGHT_PERCENTILES
from ptqbench.methods.steps import MOSF, RECALIBRATE, Calibrate, MeanScale, Reconstruct, optional
from ptqbench.quant import roles
from ptqbench.quant.spec import QuantizerSpec, QuantPlan
from ptqbench.quant.tan import DEFAULT_THETAS, TAN_METRICS

PIPELINES = ("ias", "engine")


@dataclass(frozen=True)
class DopQConfig(BlockReconConfig, SmoothOptimizationConfig):
    """Attributes (besides the reconstruction keys of both pipelines and RepQ-ViT's activation side;
    the defaults are I&S-ViT's released ones where the pipeline is I&S-ViT's):
    pipeline: "ias" (I&S-ViT's three stages: SmoothOptimizationConfig's keys) or "engine" (one
        AdaRound + LSQ reconstruction: BlockReconConfig's keys, `reconstruct`).
    tanq: TanQ for post-softmax (False: RepQ-ViT's log-sqrt2).
    tan_thetas: TanQ shape candidates in (0, pi); tan_metric: "output" (error of A @ V) or "attn".
    mosf: MOSF shared scale (False: the plain mean, RepQ-ViT).
    mosf_statistic: "median" or "inlier_mean" (the mean of the channels within `mosf_k` deviations).
    mosf_k / mosf_deviation: the inlier rule ("median" or "mean" absolute deviation).
    reconstruct: run the training (false: `pipeline: ias` without its two training stages,
        `pipeline: engine` without its reconstruction).
    The earlier reading is `pipeline=engine round_zero_point=true attention_scale=q
    reparam_arithmetic=float64 patch_input_bits=8 weight_percentiles=[0.999,0.9999,0.99999]
    tan_metric=attn mosf_statistic=inlier_mean loss_reduction=mean` (docs/methods/dopq.md).
    """

    pipeline: str = "ias"
    patch_input_bits: Optional[int] = None
    weight_percentiles: tuple[float, ...] = IAS_WEIGHT_PERCENTILES
    round_zero_point: bool = False
    attention_scale: str = "product"
    reparam_arithmetic: str = "float32"
    tanq: bool = True
    tan_thetas: tuple[float, ...] = DEFAULT_THETAS
    tan_metric: str = "output"
    mosf: bool = True
    mosf_statistic: str = "median"
    mosf_k: float = 3.0
    mosf_deviation: str = "median"
    reconstruct: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tan_thetas", tuple(float(t) for t in self.tan_thetas))
        for key, allowed in (("pipeline", PIPELINES), ("tan_metric", TAN_METRICS),
                             ("mosf_statistic", MOSF_STATISTICS), ("mosf_deviation", DEVIATIONS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r}; choose one of {allowed}")
        if self.mosf_k <= 0:
            raise ValueError(f"mosf_k must be > 0, got {self.mosf_k}")


@register_method("dopq", display="DopQ-ViT", cite="yang2024dopq", paper="DopQ-ViT")
class DopQViT(Method):
    """DopQ-ViT; see the module docstring for the reading implemented and the choices."""

    Config = DopQConfig
    # the reconstruction engine has not been checked on the fully quantized roles: refuse quant.full
    supports_full = False

    @property
    def blockwise(self) -> bool:  # type: ignore[override]
        """Reconstruction walks the model's units; without it DopQ-ViT is a one-pass PTQ method."""
        return bool(self.config.reconstruct)

    def protocol_plan(self) -> QuantPlan:
        c = self.config
        acts = reparam_activations(self, c)
        if c.tanq:
            acts[roles.POST_SOFTMAX] = QuantizerSpec(self.bits.a, kind="tan",
                                                     options=(("thetas", c.tan_thetas), ("metric", c.tan_metric)))
        return self.config.plan(self.weight_spec(), acts)

    def steps(self) -> Sequence[Step]:
        c = self.config
        rule = MOSF(c.mosf_k, c.mosf_deviation, c.mosf_statistic) if c.mosf else MeanScale()
        if c.pipeline == "ias":
            if not c.reconstruct:  # the PTQ stage alone: no training stage
                c = dataclasses.replace(c, stage_one=False, stage_three=False)
            return c.smooth_steps(self.bits, rule)
        return (Calibrate(),
                *optional(c.reparam, c.reparameterize(rule), RECALIBRATE),
                *optional(c.reconstruct, Reconstruct(c.engine_config(self.bits, loss_reduction=c.loss_reduction))))
