"""Learned weight rounding for block reconstruction (AdaRound).

Learned step sizes and bounds are each quantizer's own (`Quantizer.start_training`); this module holds
what wraps a quantizer instead:

- `AdaRoundQuantizer`: the weight's rounding direction is learned (AdaRound, Nagel et al. 2020,
  as QDrop and BRECQ use it): w^ = s (clamp(floor(w / s) + h(V) + z) - z) with the rectified
  sigmoid h, and a regularizer that pushes h to 0 or 1. `hard_weight()` gives the final
  grid-valued weight, which the layer stores; the original quantizer is then the identity on it.

The soft-rounded weight and the regularizer are autograd Functions that save only what the
quantizer holds anyway (V, floor(w / s), the grid) and recompute h in the backward. Written as
plain tensor expressions, autograd saves four weight-sized tensors per layer and step for each
(the weight: the sigmoid, both clamps' inputs, the expanded scale; the regularizer: the sigmoid,
the clamp's input, 2h - 1, |2h - 1|): about 110 MB each per ViT-B block
(scripts/recon_memory_ledger.py). The backward runs the same ATen formulas in the same order as
autograd does on those expressions, so the gradients are bit for bit the same
(tests/quant/test_learnable.py). The grid (s, z) is held per row, as the base quantizer holds it.
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
        # broadcast like the base quantizer's (one per row), not expanded to the weight's shape
        self.register_buffer("s", base._view(base.scale, w).detach().clone())
        self.register_buffer("z", base._view(base.zero_point, w).detach().clone())
        s = self.s
        self.register_buffer("w_floor", torch.floor(w / s))
        rest = (w / s - self.w_floor).clamp(1e-4, 1 - 1e-4)
        # h(V) = rest at start: the soft-rounded weight equals the FP weight (inside the range)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.calibrated = True

    def h(self) -> torch.Tensor:
        """The rectified sigmoid of V (differentiable; the Functions below recompute it in place)."""
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:  # x is the weight; its value is baked in
        if torch.is_grad_enabled():
            return _SoftRounded.apply(self.alpha, self.w_floor, self.s, self.z, self.base.qmin, self.base.qmax)
        return self.hard_weight()

    def regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's rounding regularizer: zero when every h is exactly 0 or 1."""
        return _RoundingRegularizer.apply(self.alpha, float(beta))

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        """The weight with its learned hard rounding, on the base quantizer's grid."""
        codes = self.w_floor + (self.alpha >= 0).float()
        return (torch.clamp(codes + self.z, self.base.qmin, self.base.qmax) - self.z) * self.s


def _rectified_sigmoid(alpha: torch.Tensor) -> torch.Tensor:
    """h(V) in one new tensor (inside the Functions, where autograd does not record)."""
    return torch.sigmoid(alpha).mul_(ZETA - GAMMA).add_(GAMMA).clamp_(0.0, 1.0)


def _rectified_sigmoid_backward(grad: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """d/dV of h(V) given d/dh (`grad`, overwritten), in autograd's order: ClampBackward1 (zero
    outside [0, 1]), MulBackward0, SigmoidBackward0."""
    sig = torch.sigmoid(alpha)
    u = sig * (ZETA - GAMMA) + GAMMA
    grad.masked_fill_((u >= 0.0).logical_and_(u <= 1.0).logical_not_(), 0.0)
    del u
    return torch.ops.aten.sigmoid_backward(grad.mul_(ZETA - GAMMA), sig)


def _soft_codes(alpha: torch.Tensor, w_floor: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """floor(w / s) + h(V) + z, before the clamp (sums commute exactly: one tensor, in place)."""
    return _rectified_sigmoid(alpha).add_(w_floor).add_(z)


class _SoftRounded(torch.autograd.Function):
    """(clamp(floor(w / s) + h(V) + z, qmin, qmax) - z) * s, with a gradient in V only."""

    @staticmethod
    def forward(ctx, alpha, w_floor, s, z, qmin: int, qmax: int):  # type: ignore[override]
        ctx.save_for_backward(alpha, w_floor, s, z)
        ctx.bounds = (qmin, qmax)
        return _soft_codes(alpha, w_floor, z).clamp_(qmin, qmax).sub_(z).mul_(s)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        alpha, w_floor, s, z = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        codes = _soft_codes(alpha, w_floor, z)
        outside = (codes >= qmin).logical_and_(codes <= qmax).logical_not_()
        del codes
        return _rectified_sigmoid_backward((grad * s).masked_fill_(outside, 0.0), alpha), None, None, None, None, None


class _RoundingRegularizer(torch.autograd.Function):
    """sum(1 - |2 h(V) - 1| ** beta)."""

    @staticmethod
    def forward(ctx, alpha, beta: float):  # type: ignore[override]
        ctx.save_for_backward(alpha)
        ctx.beta = beta
        return _rectified_sigmoid(alpha).mul_(2).sub_(1).abs_().pow_(beta).neg_().add_(1).sum()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (alpha,) = ctx.saved_tensors
        beta = ctx.beta
        centred = _rectified_sigmoid(alpha).mul_(2).sub_(1)
        # SumBackward0 (expand), RsubBackward1 (-grad), PowBackward0, AbsBackward0, MulBackward0 (x 2);
        # IEEE products commute and negate exactly, so each runs in place on one tensor
        g = centred.abs().pow_(beta - 1).mul_(beta).mul_(-grad).mul_(centred.sgn_()).mul_(2)
        del centred
        return _rectified_sigmoid_backward(g, alpha), None
