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
from typing import Sequence

from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.configs import ReparamConfig, reparam_activations
from ptqbench.methods.steps import RECALIBRATE, Calibrate, optional
from ptqbench.quant.spec import QuantPlan


@dataclass(frozen=True)
class RepQConfig(ReparamConfig):
    """RepQ-ViT's knobs are the reparameterized activation side's (configs.ReparamConfig)."""


@register_method("repq", display="RepQ-ViT", cite="li2023repq", paper="RepQ-ViT")
class RepQViT(Method):
    """RepQ-ViT; see the module docstring for the recipe and the choices made."""

    Config = RepQConfig

    def protocol_plan(self) -> QuantPlan:
        return self.config.plan(self.weight_spec(), reparam_activations(self, self.config))

    def steps(self) -> Sequence[Step]:
        c = self.config
        return (Calibrate(),
                *optional(c.reparam, c.reparameterize(), RECALIBRATE))
