"""Learned weight rounding for block reconstruction (AdaRound).

Learned step sizes and bounds are each quantizer's own (`Quantizer.start_training`); this module holds
what wraps a quantizer instead:

- `AdaRoundQuantizer`: the weight's rounding direction is learned (AdaRound, Nagel et al. 2020,
  as QDrop and BRECQ use it): w^ = s (clamp(floor(w / s) + h(V) + z) - z) with the rectified
  sigmoid h, and a regularizer that pushes h to 0 or 1. `hard_weight()` gives the final
  grid-valued weight, which the layer stores; the original quantizer is then the identity on it.
"""

from __future__ import annotations

import torch
from torch import nn

from ptqbench.quant.base import Quantizer
from ptqbench.quant.uniform import UniformQuantizer

# AdaRound's rectified sigmoid stretch (Nagel et al. 2020)
ZETA, GAMMA = 1.1, -0.1


def is_trainable(q: Quantizer) -> bool:
    """True when some parameter of `q` currently requires a gradient."""
    return any(p.requires_grad for p in q.parameters())


class AdaRoundQuantizer(Quantizer):
    """Learned up/down rounding of one weight tensor on the grid of a calibrated UniformQuantizer.

    Args:
        base: the layer's calibrated (per-channel) weight quantizer; its scale and zero point stay fixed.
        weight: the FP weight it will round (shape fixed at construction).
    """

    kind = "adaround"

    def __init__(self, base: UniformQuantizer, weight: torch.Tensor) -> None:
        super().__init__(base.bits, base.role)
        if not isinstance(base, UniformQuantizer) or not base.calibrated:
            raise ValueError("AdaRound needs a calibrated UniformQuantizer as its grid")
        self.base = base
        self.qname = base.qname
        w = weight.detach().float()
        s, z = base.elementwise_params(w)
        self.register_buffer("s", s.clone())
        self.register_buffer("z", z.clone())
        self.register_buffer("w_floor", torch.floor(w / s))
        rest = (w / s - self.w_floor).clamp(1e-4, 1 - 1e-4)
        # h(V) = rest at start: the soft-rounded weight equals the FP weight (inside the range)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.calibrated = True

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:  # x is the weight; its value is baked in
        codes = self.w_floor + (self.h() if torch.is_grad_enabled() else (self.alpha >= 0).float())
        return (torch.clamp(codes + self.z, self.base.qmin, self.base.qmax) - self.z) * self.s

    def regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's rounding regularizer: zero when every h is exactly 0 or 1."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        """The weight with its learned hard rounding, on the base quantizer's grid."""
        codes = self.w_floor + (self.alpha >= 0).float()
        return (torch.clamp(codes + self.z, self.base.qmin, self.base.qmax) - self.z) * self.s
