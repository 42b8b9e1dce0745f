"""RepQ-ViT (Li et al., ICCV 2023): scale reparameterization + log-sqrt2 post-softmax quantizer.

Recipe (as the released code runs it):
1. Post-LayerNorm activations (inputs of qkv, fc1, Swin PatchMerging.reduction) get per-channel
   quantizers; post-softmax gets a log-sqrt2 quantizer; everything else the common protocol.
2. One progressive calibration pass over the calibration batch.
3. Each per-channel post-LN quantizer is reparameterized to per-tensor (s~ = mean(s),
   z~ = mean(z)) by folding r and b into the LayerNorm and the next Linear.
4. A second pass recalibrates the weight quantizers of the changed Linears.

Choice (config knob `round_zero_point`): z~ is rounded to an integer by default, which makes the
per-tensor quantization exactly equal the per-channel one it replaces; the released code keeps
z~ fractional (`round_zero_point: false` reproduces it).

Choice (config knob `exact_padding`): where Swin zero-pads the norm1 output to whole windows
(mmdet detectors at most input sizes, timm Swin at a resolution that is not a multiple of the
window), the padded tokens stay the image of 0 after the fold, so the reparameterization is exact
at every input size; `exact_padding: false` reproduces the released detection code, which pads
with zeros after the fold (ptqbench.algorithms.reparam, "Window padding").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ptqbench.methods.base import Method, ProtocolConfig, register_method
from ptqbench.models.adapter import QuantizedModel
from ptqbench.quant import roles
from ptqbench.quant.calibration import calibrate, quantizers, switched
from ptqbench.algorithms.reparam import reparameterize_all
from ptqbench.quant.spec import QuantPlan


@dataclass(frozen=True)
class RepQConfig(ProtocolConfig):
    """Attributes:
    reparam: per-channel post-LN calibration + scale reparameterization (False: plain per-tensor).
    log_sqrt2: log-sqrt2 quantizer for post-softmax (False: uniform).
    round_zero_point: integer z~ (exact) vs the released code's fractional z~.
    exact_padding: Swin's window padding stays the image of 0 after the fold (exact) vs the
        released code's zeros.
    """

    reparam: bool = True
    log_sqrt2: bool = True
    round_zero_point: bool = True
    exact_padding: bool = True


@register_method("repq")
class RepQViT(Method):
    """RepQ-ViT; see the module docstring for the recipe and the choices made."""

    Config = RepQConfig

    def protocol_plan(self) -> QuantPlan:
        base = super().protocol_plan()
        acts = dict(base.activations)
        if self.config.reparam:
            acts[roles.POST_LN] = self.act_spec(per_channel=True)
        if self.config.log_sqrt2:
            acts[roles.POST_SOFTMAX] = self.act_spec(kind="log_sqrt2")
        return QuantPlan(base.weight, acts)

    def quantize(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        stats: dict[str, Any] = {"calibrated_quantizers": calibrate(qm.model, calib)}
        if self.config.reparam:
            reparam = reparameterize_all(qm.reparam_pairs, round_zero_point=self.config.round_zero_point,
                                         exact_padding=self.config.exact_padding)
            stats["reparameterized_pairs"] = len(reparam)
            stats["recalibrated_quantizers"] = calibrate(qm.model, calib, desc="recalibrate")
        return stats


def calibrate_activations(qm: QuantizedModel, calib: torch.Tensor, config: RepQConfig) -> dict[str, Any]:
    """RepQ-ViT's activation side with weights left in FP, for methods that choose the weights
    themselves afterwards (ERQ, GPTQ): one calibration pass with weight quantizers off, then the
    scale reparameterization. Weight quantizers stay uncalibrated; the caller fits them."""
    with switched((q for q in quantizers(qm.model).values() if q.role == roles.WEIGHT), False):
        stats: dict[str, Any] = {"calibrated_quantizers": calibrate(qm.model, calib, desc="calibrate activations")}
        if config.reparam:
            stats["reparameterized_pairs"] = len(reparameterize_all(qm.reparam_pairs, round_zero_point=config.round_zero_point,
                                                                    exact_padding=config.exact_padding))
    return stats
