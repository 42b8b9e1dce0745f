"""TanQ: a tangent-warped uniform quantizer for post-softmax activations (DopQ-ViT).

Attention probabilities follow a power law: most sit near 0, and the few near 1 decide where a
token attends. Log quantizers (log2, log-sqrt2) put their levels near 0 and almost none near 1.
TanQ warps [0, 1] with a tangent so that uniform codes in the warped space land densely near
*both* ends:

    u = tan(theta (x - 1/2)) / tan(theta / 2)           in [-1, 1]
    code = round((u + 1) / 2 * (2^b - 1))               uniform in u
    x^ = 1/2 + arctan(u^ tan(theta / 2)) / theta        back to [0, 1]

theta in (0, pi) sets how strongly levels crowd at the ends (theta -> 0 is the uniform grid on
[0, 1]); the end levels are exactly 0 and 1. DopQ-ViT's sources at hand do not give the exact
formula (docs/methods/dopq.md), so this is ptqbench's reading, and theta is chosen per layer from
`thetas` by the MSE of the attention map (`metric: attn`) or, as DopQ-ViT's point is the product
with V, by the MSE of A @ V on the calibration data (`metric: output`; the quantizer keeps V when its
matmul calls `see_matmul_operand`, as AIQViT's DFQ does).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import register_kind
from ptqbench.quant.ranges import attention_slices, subsample

DEFAULT_THETAS = (0.5, 1.0, 1.5, 2.0, 2.4, 2.7, 2.9, 3.0, 3.06, 3.1)
TAN_METRICS = ("attn", "output")


def tan_levels(bits: int, theta: float) -> torch.Tensor:
    """The 2^b dequantized values of TanQ on [0, 1], ascending (for tests and inspection)."""
    n = 2**bits - 1
    u = torch.arange(n + 1, dtype=torch.float64) / n * 2 - 1
    return (0.5 + torch.atan(u * math.tan(theta / 2)) / theta).float()


def _dequantize_(codes: torch.Tensor, theta: float, bits: int) -> torch.Tensor:
    """Codes (floats 0..2^b-1) to values in [0, 1], in place: the inverse warp."""
    n = 2**bits - 1
    codes.mul_(2.0 / n).sub_(1).mul_(math.tan(theta / 2)).atan_().div_(theta)
    return codes.add_(0.5)


@functools.lru_cache(maxsize=256)
def _dequant_table(theta: float, bits: int, dtype: torch.dtype, device: torch.device) -> Optional[torch.Tensor]:
    """`_dequantize_` of every code, computed by the same ops in the same dtype, so looking a code
    up gives the bits the ops give. CPU kernels run the arctangent vectorized on full SIMD blocks
    and scalar on a tensor's tail, which may differ in the last bit: the table is computed both
    ways and used only where they agree (else None: the arithmetic path)."""
    n = 2**bits - 1
    codes = torch.arange(n + 1, dtype=dtype, device=device)
    vectorized = _dequantize_(codes.repeat(64), theta, bits)[: n + 1].clone()
    scalar = torch.cat([_dequantize_(codes[i : i + 1].clone(), theta, bits) for i in range(n + 1)])
    return vectorized if torch.equal(vectorized, scalar) else None


def tan_fake_quant(x: torch.Tensor, theta: float, bits: int) -> torch.Tensor:
    """Quantize-dequantize `x` (clamped to [0, 1]) on the TanQ grid; straight-through under autograd.

    Without autograd the same operations, in the same order, run in place on one allocation:
    attention maps are a ViT's largest activations, and each out-of-place step is one more
    allocation and pass over them; on CPU the 2^b dequantized values come from a table of the
    same operations' results (docs/benchmarks.md)."""
    n = 2**bits - 1
    t = math.tan(theta / 2)
    if not (torch.is_grad_enabled() and x.requires_grad):
        y = x.clamp(0.0, 1.0)
        y.sub_(0.5).mul_(theta).tan_().div_(t)
        y.add_(1).mul_(n / 2).round_().clamp_(0, n)
        levels = _dequant_table(theta, bits, y.dtype, y.device) if y.device.type == "cpu" else None
        if levels is not None and not y.sum().isnan():  # a NaN code has no entry (the arithmetic keeps it NaN); a sum is the cheapest test
            return levels.index_select(0, y.to(torch.int32).view(-1)).view_as(y)  # one gather, no arctangent
        return _dequantize_(y, theta, bits)
    return _TanSTE.apply(x, theta, bits)


def _tan_steps(x: torch.Tensor, theta: float, n: int, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The warped value, the code before its clamp, the arctangent's input (straight-through round)."""
    warped = torch.tan(theta * (x.clamp(0.0, 1.0) - 0.5))
    scaled = (warped / t + 1) * (n / 2)
    rounded = scaled + (torch.round(scaled) - scaled)
    return warped, rounded, (torch.clamp(rounded, 0, n) * (2.0 / n) - 1) * t


class _TanSTE(torch.autograd.Function):
    """TanQ with straight-through rounding, saving only x: as an expression autograd saves the
    tangent, the clamped code's input and the arctangent's input besides it, three attention-map-
    sized tensors per quantizer and step. The backward recomputes them and runs autograd's formulas
    (AtanBackward0, TanBackward0, the clamps' where, the scalar products and quotients) in its
    order, so the gradient is bit for bit the same (tests/quant/test_fast_paths.py)."""

    @staticmethod
    def forward(ctx, x, theta: float, bits: int):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.args = (theta, bits)
        n = 2**bits - 1
        return 0.5 + torch.atan(_tan_steps(x, theta, n, math.tan(theta / 2))[2]) / theta

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        theta, bits = ctx.args
        n, t = 2**bits - 1, math.tan(theta / 2)
        warped, rounded, at = _tan_steps(x, theta, n, t)
        g = grad / theta / (at * at + 1) * t * (2.0 / n)
        del at
        g = torch.where((rounded >= 0).logical_and_(rounded <= n), g, 0.0) * (n / 2) / t
        del rounded
        g = g * (1 + warped.pow(2)) * theta
        del warped
        return torch.where((x >= 0.0).logical_and_(x <= 1.0), g, 0.0), None, None


@dataclass(frozen=True)
class TanOptions:
    """thetas: candidate warps in (0, pi), one picked per layer; metric: "attn" (MSE of the map) or
    "output" (MSE of A @ V); max_samples: elements searched."""

    thetas: tuple[float, ...] = DEFAULT_THETAS
    metric: str = "attn"
    max_samples: int = 1 << 22


@register_kind("tan", options=TanOptions)
class TanQuantizer(Quantizer):
    """TanQ for values in [0, 1] (attention probabilities); `theta` fitted by MSE over `thetas`."""

    kind = "tan"

    def __init__(self, bits: int, role: str, thetas: Sequence[float] = DEFAULT_THETAS, metric: str = "attn",
                 max_samples: int = 1 << 22) -> None:
        super().__init__(bits, role)
        if not thetas or any(not 0.0 < float(t) < math.pi for t in thetas):
            raise ValueError(f"TanQ thetas must lie in (0, pi), got {list(thetas)}")
        if metric not in TAN_METRICS:
            raise ValueError(f"TanQ metric={metric!r}; choose one of {TAN_METRICS}")
        self.thetas = tuple(float(t) for t in thetas)
        self.metric = metric
        self.max_samples = max_samples
        self.theta = self.thetas[0]
        self.operand: Optional[torch.Tensor] = None

    def see_matmul_operand(self, other: torch.Tensor, left: bool) -> None:
        """Keep V of A @ V for the calibration that measures the product's error (metric="output")."""
        if left and self.metric == "output" and self.enabled and self.auto_calibrate and not self.calibrated:
            self.operand = other.detach()

    def _fit(self, x: torch.Tensor) -> None:
        if (x < 0).any() or (x > 1 + 1e-6).any():
            self.operand = None
            raise ValueError(f"TanQ quantizer {self.qname!r} needs input in [0, 1] (post-softmax)")
        try:
            xs, vs = attention_slices(x.detach(), self.operand, self.max_samples) if self.metric == "output" else (x, None)
        finally:
            self.operand = None
        if vs is None:  # the map's own error (metric "attn", or no V seen)
            v = subsample(xs.float().reshape(1, -1), self.max_samples)
            errs = [float((tan_fake_quant(v, t, self.bits) - v).pow(2).mean()) for t in self.thetas]
        else:
            ref = xs @ vs
            errs = [float((tan_fake_quant(xs, t, self.bits) @ vs - ref).pow(2).mean()) for t in self.thetas]
        self.theta = self.thetas[min(range(len(errs)), key=errs.__getitem__)]  # ties: first

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return tan_fake_quant(x, self.theta, self.bits)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor", theta=self.theta, metric=self.metric)
        return d
