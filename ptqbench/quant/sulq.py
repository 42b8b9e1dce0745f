"""SULQ, I&S-ViT's shift-uniform-log2 quantizer for post-softmax activations (Zhong et al., 2023).

A shift eta moves the attention probabilities away from 0 before the log, the log2 domain is
quantized uniformly, and the exponent is rounded to an integer on the way back:

    u = log2(x + eta)
    code = clamp(round((u - lo) / d), 0, c_max)
    x^ = 2^round(lo + code d) - eta

lo and hi are the min and max of log2(x + eta) on the calibration data; eta is picked from `biases`
by the mean squared error of the quantized calibration tensor.

As released (IaS-ViT `quant/quantizer.py`, `LogSqrt2Quantizer`): the fit scores candidates with
d = (hi - lo) / (2^b - 1) and codes up to 2^b - 1, while the forward uses d = (hi - lo) / 2^b and
codes up to 2^b (2^b + 1 codes). `released_asymmetry: false` uses the fit's grid in both. Either
way the integer exponent leaves about hi - lo + 1 distinct levels {2^e - eta}: the shift, not the
bit-width, decides the grid once 2^b exceeds that span. Under autograd both roundings pass
gradients straight through, as released, so the gradient with respect to x is x^ + eta over
x + eta (the derivative of 2^(log2(x + eta)) with the exponent held at its rounded value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import register_kind

DEFAULT_BIASES = (0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.5, 1.0)


def _ln2(like: torch.Tensor) -> torch.Tensor:
    """ln 2 as a 0-dim tensor of `like`'s dtype, the divisor of the release's log2."""
    return torch.log(torch.tensor(2.0, dtype=like.dtype, device=like.device))


def _log2(x: torch.Tensor) -> torch.Tensor:
    """log2 as the release computes it, ln(x) / ln(2) in float32: `torch.log2` differs in the last
    bit on some inputs, which moves a code at an exact rounding tie."""
    return torch.log(x) / _ln2(x)


def sulq_fake_quant(x: torch.Tensor, eta: float, lo: torch.Tensor, hi: torch.Tensor, top_code: int,
                    steps: int) -> torch.Tensor:
    """Quantize-dequantize on the shifted log2 grid: step (hi - lo) / `steps`, codes 0..`top_code`.

    Without autograd the same operations run in place on one buffer (the attention map is a
    ViT's largest activation; ten map-sized temporaries cost more than the arithmetic). Under
    autograd the roundings pass gradients straight through to x; the bounds are constants (the
    quantizer's buffers: I&S-ViT trains no quantizer scale)."""
    if lo.requires_grad or hi.requires_grad:
        raise ValueError("SULQ's bounds lo and hi are fixed; pass tensors that do not require grad")
    d = (hi - lo) / steps
    if not (torch.is_grad_enabled() and x.requires_grad):
        y = x + eta
        y.log_().div_(_ln2(y))
        y.sub_(lo).div_(d).round_().clamp_(0, top_code)
        return y.mul_(d).add_(lo).round_().exp2_().sub_(eta)
    return _SULQSTE.apply(x, eta, lo, d, top_code)


def _sulq_steps(x: torch.Tensor, eta: float, lo: torch.Tensor, d: torch.Tensor, top_code: int,
                for_backward: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
    """The straight-through expression's operations, in place on two buffers: 2^(rounded
    exponent) (exp2's result), and for the backward also x + eta (the log's input) and where the
    rounded code lies inside [0, top_code] (the clamp's mask)."""
    shifted = x + eta
    scaled = torch.log(shifted) if for_backward else shifted.log_()
    scaled.div_(_ln2(x)).sub_(lo).div_(d)
    scaled.add_(torch.round(scaled).sub_(scaled))  # s + (round(s) - s), as round_ste
    inside = scaled.ge(0).logical_and_(scaled.le(top_code)) if for_backward else None
    exponent = scaled.clamp_(0, top_code).mul_(d).add_(lo)
    power = exponent.add_(torch.round(exponent).sub_(exponent)).exp2_()
    return (shifted if for_backward else None), inside, power


class _SULQSTE(torch.autograd.Function):
    """SULQ with straight-through roundings and fixed bounds, saving only x: as an expression
    autograd saves x + eta, the clamp's input and exp2's result, three attention-map-sized
    tensors per quantizer and step. The backward recomputes them and runs autograd's formulas
    (Exp2Backward0, MulBackward0, ClampBackward1, DivBackward0, LogBackward0) in its order, so
    the gradient is bit for bit the same (tests/quant/test_fast_paths.py)."""

    @staticmethod
    def forward(ctx, x, eta: float, lo, d, top_code: int):  # type: ignore[override]
        ctx.save_for_backward(x, lo, d)
        ctx.args = (eta, top_code)
        return _sulq_steps(x, eta, lo, d, top_code, for_backward=False)[2].sub_(eta)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, lo, d = ctx.saved_tensors
        eta, top_code = ctx.args
        shifted, inside, power = _sulq_steps(x, eta, lo, d, top_code, for_backward=True)
        g = power.mul_(grad).mul_(math.log(2.0)).mul_(d)  # grad * 2^e * ln 2, then * d
        g.masked_fill_(inside.logical_not_(), 0.0)
        g.div_(d).div_(_ln2(x))
        return g.div_(shifted), None, None, None, None


@dataclass(frozen=True)
class SULQOptions:
    """biases: candidate shifts eta, one picked per tensor by MSE; released_asymmetry: the forward
    grid has 2^b + 1 codes and step (hi - lo) / 2^b while the fit scores 2^b codes (as released)."""

    biases: tuple[float, ...] = DEFAULT_BIASES
    released_asymmetry: bool = True


@register_kind("sulq", options=SULQOptions)
class SULQQuantizer(Quantizer):
    """Shift-uniform-log2 quantizer for non-negative activations (attention probabilities), per tensor."""

    kind = "sulq"

    def __init__(self, bits: int, role: str, biases: Sequence[float] = DEFAULT_BIASES,
                 released_asymmetry: bool = True) -> None:
        super().__init__(bits, role)
        if not biases or any(float(b) <= 0 for b in biases):
            raise ValueError(f"SULQ biases must be positive shifts, got {list(biases)}")
        self.biases = tuple(float(b) for b in biases)
        self.released_asymmetry = bool(released_asymmetry)
        self.register_buffer("eta", torch.tensor(self.biases[0]))
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.ones(()))

    def _grid(self, fitting: bool) -> tuple[int, int]:
        """(top code, steps between lo and hi): the fit's 2^b - 1 for both, or the released
        forward's 2^b when `released_asymmetry`."""
        n = 2**self.bits - 1
        return (n, n) if fitting or not self.released_asymmetry else (n + 1, n + 1)

    def _fit(self, x: torch.Tensor) -> None:
        if (x < 0).any():
            raise ValueError(f"SULQ quantizer {self.qname!r} needs non-negative input (post-softmax)")
        v = x.float()
        best = None
        for eta in self.biases:  # ties: the first (smallest) shift, as released (strict <)
            u = _log2(v + eta)
            lo, hi = u.min(), u.max()
            err = float((sulq_fake_quant(v, eta, lo, hi, *self._grid(fitting=True)) - v).pow(2).mean())
            if best is None or err < best[0]:
                best = (err, eta, lo, hi)
        _, eta, lo, hi = best
        self.eta = torch.tensor(eta, device=x.device)
        self.lo, self.hi = lo.clone(), hi.clone()

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return sulq_fake_quant(x, float(self.eta), self.lo, self.hi, *self._grid(fitting=False))

    def levels(self) -> torch.Tensor:
        """The distinct dequantized values of the forward grid, ascending (tests, inspection)."""
        top, steps = self._grid(fitting=False)
        codes = torch.arange(top + 1, dtype=torch.float32, device=self.lo.device)
        return torch.unique(torch.exp2(torch.round(codes * (self.hi - self.lo) / steps + self.lo)) - self.eta)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor", eta=float(self.eta), log2_range=[float(self.lo), float(self.hi)],
                 released_asymmetry=self.released_asymmetry)
        return d
