"""TSPTQ-ViT (Tai et al., ICASSP 2023): two-scaled scaling factors, V-2SF and O-2SF.

No code is public and the abstract and summaries do not give the formulas, so this follows the
reading in the project's method notes (../shared/docs/METHODS.md), every free parameter an option
(quantizers in ptqbench/quant/two_scale.py; docs/methods.md says what was found, what was chosen
and why):

- post-softmax and post-GELU activations (the inputs of attn @ v and of fc2): V-2SF, a fine scale s for the dense small values and s * 2^k for the large ones, one code
  bit telling which; the coarse top and k by MSE over {max, search percentiles} x 1..k_max.
- LayerNorm outputs (inputs of qkv, fc1, Swin reduction): O-2SF, channels whose range exceeds a
  multiple of the median channel range share the scale s * 2^k; the multiple from
  `outlier_ratios` and k from 1..k_max, by MSE.
- Everything else: the common protocol (per-channel weights, per-tensor activations), ranges by
  RepQ-ViT's MSE over percentiles, one progressive calibration pass; the patch embedding's input
  FP, as in PTQ4ViT, which TSPTQ-ViT extends.
- Then PTQ4ViT's Hessian-guided search over every layer (`search_rounds`, default 3), V-2SF and
  O-2SF with candidates of their own, on the released PTQ4ViT search's keys (the `SearchConfig`
  defaults, as `method=ptq4vit`'s). `search_rounds=0` keeps the MSE fits (minutes instead of
  about 40 min for DeiT-T on one CPU core; docs/methods/tsptq.md has both).
- Fully quantized mode (`quant.full=true`, the paper's headline setting): the LayerNorm inputs
  (residual stream) get O-2SF as well (`ln_input_o2sf`, our choice: they have the same outlier
  channels as the LayerNorm outputs), the other fully quantized roles uniform per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ptqbench.methods.base import Method, ProtocolConfig, Step, register_method
from ptqbench.methods.ptq4vit import PTQ4ViTConfig, twin_uniform_specs
from ptqbench.algorithms.hessian_search import SearchConfig
from ptqbench.methods.steps import Calibrate, HessianSearch, optional
from ptqbench.models.adapter import QuantizedModel
from ptqbench.quant import roles
from ptqbench.quant.spec import QuantizerSpec, QuantPlan


V2SF_OFF = ("uniform", "twin")


@dataclass(frozen=True)
class TSPTQConfig(ProtocolConfig, SearchConfig):
    """Attributes (besides PTQ4ViT's search knobs, `SearchConfig`: search_metric,
    search_candidates, search_rounds, alpha_min, alpha_max, chunk_size, search_inputs):
    search_rounds: > 0 (default 3) runs PTQ4ViT's Hessian-guided search over every layer after
        the calibration pass, V-2SF and O-2SF included; 0 keeps every quantizer's MSE fit on its
        own tensor (docs/methods/tsptq.md, "On the released PTQ4ViT recipe").
    patch_input_bits: null (default): the patch embedding's input FP, as PTQ4ViT's release.
    v2sf: V-2SF for post-softmax and post-GELU (False: `v2sf_off` there).
    v2sf_off: what post-softmax and post-GELU get when v2sf is false: "uniform", or "twin",
        PTQ4ViT's twin uniform at PTQ4ViT's defaults, the quantizer the paper compares V-2SF with.
    o2sf: O-2SF for LayerNorm outputs (False: uniform per tensor).
    k_max: largest power-of-two ratio 2^k between the two scales tried (both quantizers).
    outlier_ratios: O-2SF candidate thresholds, in multiples of the median channel range.
    ln_input_o2sf: fully quantized mode: O-2SF for LayerNorm inputs too (unless quant.ln_input=ptf).
    """

    v2sf: bool = True
    v2sf_off: str = "uniform"
    o2sf: bool = True
    k_max: int = 6
    outlier_ratios: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    ln_input_o2sf: bool = True
    patch_input_bits: Optional[int] = None

    def __post_init__(self) -> None:
        ProtocolConfig.__post_init__(self)
        SearchConfig.__post_init__(self)
        if self.v2sf_off not in V2SF_OFF:
            raise ValueError(f"method.v2sf_off={self.v2sf_off!r}; choose one of {V2SF_OFF}")
        if self.v2sf and self.v2sf_off != "uniform":
            raise ValueError(f"method.v2sf_off={self.v2sf_off!r} would change nothing while method.v2sf=true; "
                             "add method.v2sf=false")
        object.__setattr__(self, "outlier_ratios", tuple(float(r) for r in self.outlier_ratios))


@register_method("tsptq", display="TSPTQ-ViT", cite="tai2023tsptq", paper="TSPTQ-ViT")
class TSPTQViT(Method):
    """TSPTQ-ViT; see the module docstring."""

    Config = TSPTQConfig

    def _o2sf(self, bits: int) -> QuantizerSpec:
        c = self.config
        return self.act_spec(bits=bits, kind="o2sf", options=(("ratios", c.outlier_ratios), ("k_max", c.k_max)))

    def protocol_plan(self) -> QuantPlan:
        base = self.common_plan()
        acts = dict(base.activations)
        if self.config.v2sf:
            for role in (roles.POST_SOFTMAX, roles.POST_GELU):
                acts[role] = self.act_spec(kind="v2sf", options=(("k_max", self.config.k_max),))
        elif self.config.v2sf_off == "twin":  # PTQ4ViT's specs, its minmax initial range included
            acts.update(twin_uniform_specs(self.bits.a, PTQ4ViTConfig))
        if self.config.o2sf:
            acts[roles.POST_LN] = self._o2sf(self.bits.a)
        return QuantPlan(base.weight, acts)

    def full_spec(self, role: str) -> QuantizerSpec:
        if role == roles.LN_IN and self.config.ln_input_o2sf and self.quant.ln_input == "uniform":
            return self._o2sf(self.quant.bits)
        return super().full_spec(role)

    @property
    def blockwise(self) -> bool:  # type: ignore[override]
        """The Hessian-guided search walks the model's units; without it, one calibration pass."""
        return self.config.search_rounds > 0

    def steps(self) -> Sequence[Step]:
        return (Calibrate(), *optional(self.config.search_rounds > 0, HessianSearch(self.config)), count_o2sf_outliers)


def count_o2sf_outliers(qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
    """How many channels the calibrated O-2SF quantizers put on the coarse scale (for the record)."""
    o2sf = [q.describe() for q in qm.model.modules() if getattr(q, "kind", None) == "o2sf"]
    return {"o2sf_outlier_channels": sum(d.get("outlier_channels", 0) for d in o2sf)}
