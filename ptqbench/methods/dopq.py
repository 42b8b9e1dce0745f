"""DopQ-ViT (Yang et al., arXiv 2408.03291): TanQ for post-softmax, MOSF for the post-LayerNorm
reparameterization, then (optionally) block reconstruction.

No code is public and the sources at hand (abstract, third-party summaries) do not give the
formulas, so what follows is ptqbench's reading, not a reproduction (sources and reasoning in
docs/methods/dopq.md):

1. RepQ-ViT's activation side: per-channel post-LN quantizers, calibrated in one pass.
2. TanQ (`tanq`) on post-softmax: uniform codes in u = tan(theta (x - 1/2)) / tan(theta / 2),
   levels dense near 0 and 1, theta per layer by MSE over `tan_thetas` (ptqbench.quant.tan).
   `tanq: false` uses RepQ-ViT's log-sqrt2 instead (the ablation).
3. MOSF (`mosf`): the shared scale of the per-channel -> per-tensor reparameterization is the mean
   of the inlier channel scales, outliers being > `mosf_k` median absolute deviations from the
   median (`mosf_deviation: mean` uses the mean absolute deviation). `mosf: false` = RepQ's mean.
   Finding: with an integer shared zero point and per-output-channel weight quantization the
   reparameterization is exact for *any* shared scale, so MOSF changes results only through float
   rounding and, under reconstruction, through the starting step size Adam moves (docs).
4. Weight quantizers recalibrated on the reparameterized weights.
5. Block reconstruction (`reconstruct`, on by default: the papers' numbers come from it, as later
   papers list DopQ-ViT among reconstruction methods): I&S-ViT's setting, 1000 iterations per
   block at <= 4 bits and 200 at 6 bits, batch 64, AdaRound weights and LSQ activation steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ptqbench.algorithms.reparam import DEVIATIONS
from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.configs import BlockReconConfig, reparam_activations
from ptqbench.methods.steps import MOSF, RECALIBRATE, Calibrate, MeanScale, Reconstruct, optional
from ptqbench.quant import roles
from ptqbench.quant.spec import QuantizerSpec, QuantPlan
from ptqbench.quant.tan import DEFAULT_THETAS


@dataclass(frozen=True)
class DopQConfig(BlockReconConfig):
    """Attributes (besides the reconstruction and RepQ-ViT knobs):
    tanq: TanQ for post-softmax (False: RepQ-ViT's log-sqrt2).
    tan_thetas: TanQ shape candidates in (0, pi), picked per layer by MSE.
    mosf: MAD-guided shared scale (False: the plain mean, RepQ-ViT).
    mosf_k: outlier threshold in deviations from the median scale.
    mosf_deviation: "median" (median absolute deviation) or "mean" (mean absolute deviation).
    reconstruct: run block reconstruction after the PTQ stage.
    """

    tanq: bool = True
    tan_thetas: tuple[float, ...] = DEFAULT_THETAS
    mosf: bool = True
    mosf_k: float = 3.0
    mosf_deviation: str = "median"
    reconstruct: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tan_thetas", tuple(float(t) for t in self.tan_thetas))
        if self.mosf_deviation not in DEVIATIONS:
            raise ValueError(f"mosf_deviation={self.mosf_deviation!r}; choose one of {DEVIATIONS}")
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
            acts[roles.POST_SOFTMAX] = QuantizerSpec(self.bits.a, kind="tan", options=(("thetas", c.tan_thetas),))
        return self.config.plan(self.weight_spec(), acts)

    def steps(self) -> Sequence[Step]:
        c = self.config
        rule = MOSF(c.mosf_k, c.mosf_deviation) if c.mosf else MeanScale()
        return (Calibrate(),
                *optional(c.reparam, c.reparameterize(rule), RECALIBRATE),
                *optional(c.reconstruct, Reconstruct(c.engine_config(self.bits))))
