"""Uniform (affine) fake quantization, per tensor or per channel, symmetric or asymmetric."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import register_kind
from ptqbench.quant.ranges import RangeSearch, candidate_ranges, pick_by_mse, subsample
from ptqbench.quant.streamed_search import EachInput, over_slices, streamed_candidates, streamed_pick_by_mse, tails_fit

# A range narrower than this fraction of its magnitude is a constant channel (e.g. a LayerNorm
# channel with weight 0). Such a channel gets the range [min(x, 0), max(x, 0)], so its constant
# value is a grid point and the zero point stays inside the code range. A tiny-epsilon scale
# instead makes the zero point explode (and RepQ's mean zero point with it).
DEGENERATE_RTOL = 1e-6
# Scale given to an all-zero channel: any scale encodes 0 exactly; a tiny one keeps RepQ's
# r = s / mean(s) tiny, so reparameterization does not inflate that weight column.
ZERO_CHANNEL_SCALE = 1e-8


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer code range: [0, 2^b - 1] asymmetric, [-2^(b-1), 2^(b-1) - 1] symmetric."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
               integral_zero_point: bool = True, overwrite: bool = False) -> torch.Tensor:
    """Quantize-dequantize: (clamp(round(x / s) + z, qmin, qmax) - z) * s.

    Without autograd it runs as one allocation and four in-place passes: for an integer zero
    point clamp(round(x/s) + z, qmin, qmax) - z == clamp(round(x/s), qmin - z, qmax - z)
    exactly, which saves the add and the subtract (elementwise passes over activations are the
    whole fake-quantization cost on CPU; allocation and memory traffic, not arithmetic, dominate).
    A fractional zero point (the released reparameterization's mean z~) makes n + z - z differ
    from n in the last bit, so `integral_zero_point=False` runs the formula as written.
    The result is contiguous even for a strided `x` (q, k, v are views into the qkv output): the
    matmul that consumes it would otherwise copy it into a contiguous buffer, one more pass.
    `overwrite`: `x` is a contiguous temporary of the caller's, and the result is written over it
    (no allocation at all; without autograd only).
    """
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return _FakeQuantSTE.apply(x, scale, zero_point, qmin, qmax)
    if overwrite and x.is_contiguous():
        y = x.div_(scale)
    elif x.is_contiguous():
        y = torch.div(x, scale)
    else:
        y = torch.div(x, scale, out=torch.empty(x.shape, dtype=torch.result_type(x, scale), device=x.device))
    y.round_()
    if not integral_zero_point:
        return y.add_(zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)
    eager = not torch.compiler.is_compiling()
    if eager and zero_point.dim() == 0 and zero_point.device.type == "cpu":
        # scalar bounds: the fastest eager clamp (no GPU sync; a compiled graph keeps tensor bounds, no break)
        z = float(zero_point)
        y.clamp_(qmin - z, qmax - z)
    elif eager and y.device.type == "cpu":
        # tensor bounds (a zero point per head or channel): on CPU `clamp_` with tensor bounds runs
        # a scalar loop (10x a pass here); maximum then minimum are two vectorized passes with its
        # values (NaN stays NaN)
        torch.minimum(torch.maximum(y, qmin - zero_point, out=y), qmax - zero_point, out=y)
    else:
        y.clamp_(qmin - zero_point, qmax - zero_point)
    return y.mul_(scale)


class _FakeQuantSTE(torch.autograd.Function):
    """(clamp(round_ste(x / s) + z, qmin, qmax) - z) * s with straight-through rounding (LSQ's
    gradient in s), saving only x, s and z: written as an expression, autograd saves two more
    activation-sized tensors per quantizer and step (the clamp's input and the product's),
    about 95 MB per ViT-B block at batch 8 (scripts/recon_memory_ledger.py). The backward
    recomputes them and runs the ATen formulas autograd runs on that expression, in its order
    (MulBackward0, ClampBackward1, DivBackward0, each reduced to s's shape as the engine
    reduces broadcast gradients), so the gradients are bit for bit the same
    (tests/quant/test_fast_paths.py). The zero point gets no gradient (it stays a fixed code)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):  # type: ignore[override]
        ctx.save_for_backward(x, scale, zero_point)
        ctx.bounds = (qmin, qmax)
        return _codes(x, scale, zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        if ctx.needs_input_grad[2]:
            raise RuntimeError("fake_quant trains the scale, not the zero point (an integer code)")
        codes = _codes(x, scale, zero_point)
        grad_clamp = (grad * scale).masked_fill_((codes >= qmin).logical_and_(codes <= qmax).logical_not_(), 0.0)
        grad_x = grad_clamp / scale if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:  # IEEE products commute and negate exactly: the same bits in place
            # ... but sum_to_size adds in the memory order of its input: autograd's product is laid
            # out as `grad` (its first operand), which may differ from x's (q, k, v are views), so
            # this product is a new tensor, not `codes` overwritten
            from_product = (grad * codes.clamp_(qmin, qmax).sub_(zero_point)).sum_to_size(scale.shape)
            del codes
            from_division = (x / scale).div_(scale).mul_(grad_clamp).neg_().sum_to_size(scale.shape)
            grad_scale = from_product + from_division
        return grad_x, grad_scale, None, None, None


def _codes(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """round_ste(x / s) + z before the clamp, as autograd's expression computes it (v + (round(v) - v),
    which is not always round(v) in floating point), in one new tensor."""
    v = x / scale
    return torch.round(v).sub_(v).add_(v).add_(zero_point)


def select_below(x: torch.Tensor, boundary: float, below: float, above: float) -> torch.Tensor:
    """Per element of `x`: `below` where x < boundary, else `above` (a NaN gets either, or stays
    NaN), without a comparison or `torch.where`: on CPU each of those is 10-20x slower than an
    in-place pass. With `above` > 0, three passes: x - boundary is negative exactly where
    x < boundary (a float difference is 0 only for equal operands, and then +0: the boundary 0 is
    added as +0.0, which turns -0.0 into +0.0), `copysign` gives it the magnitude `above`, and
    `threshold` replaces the negative ones by `below`. Otherwise five `threshold` / negation
    passes (x >= boundary is x > its float predecessor; values marked -inf first are the `below`
    side). Needs finite `below`, `above` and boundary."""
    if above > 0:
        d = torch.add(x, -boundary if boundary != 0 else 0.0)
        torch.copysign(torch.tensor(above, dtype=d.dtype, device=d.device), d, out=d)
        return F.threshold_(d, 0.0, below)
    pred = float(torch.nextafter(torch.tensor(boundary, dtype=x.dtype), torch.tensor(-math.inf, dtype=x.dtype)))
    s = F.threshold(x, pred, -math.inf)  # x < boundary -> -inf; x >= boundary keeps x
    s.neg_()
    F.threshold_(s, -boundary, -above)   # (-x <= -boundary) -> -above; +inf (the below side) stays
    s.neg_()
    return F.threshold_(s, -math.inf, below)  # -inf -> below; `above` > -inf stays


def params_from_range(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point for clipping range [lo, hi] (tensors of equal shape).

    Handles zero-width ranges by design (see DEGENERATE_RTOL).
    """
    lo = lo.float()
    hi = hi.float()
    width = hi - lo
    degenerate = width <= DEGENERATE_RTOL * torch.maximum(lo.abs(), hi.abs())
    lo = torch.where(degenerate, torch.clamp(lo, max=0.0), lo)
    hi = torch.where(degenerate, torch.clamp(hi, min=0.0), hi)
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = amax / qmax if qmax > 0 else amax
        zero_point = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero_point = torch.zeros_like(scale)
    all_zero = scale <= 0
    scale = torch.where(all_zero, torch.full_like(scale, ZERO_CHANNEL_SCALE), scale)
    if not symmetric:
        zero_point = torch.round(-lo / scale)
        zero_point = torch.where(all_zero, torch.zeros_like(zero_point), zero_point)
    return scale, zero_point


def _range_quantizer(bits: int, symmetric: bool):
    """`quantize(v, lo, hi)`: rows of `v` fake-quantized with the ranges [lo, hi] (one per row)."""
    qmin, qmax = qrange(bits, symmetric)

    def quantize_2d(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        s, z = params_from_range(lo, hi, bits, symmetric)
        return fake_quant(v, s[:, None], z[:, None], qmin, qmax)
    return quantize_2d


def fit_rows(x2d: torch.Tensor, bits: int, symmetric: bool, search: RangeSearch) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `x2d` ([groups, samples]) by `search`."""
    lo, hi = pick_by_mse(x2d, candidate_ranges(x2d, search), _range_quantizer(bits, symmetric))
    return params_from_range(lo, hi, bits, symmetric)


@register_kind("uniform", search=True, layout=True)
@register_kind("uniform_per_head", search=True, preset={"channel_axis": 1})
class UniformQuantizer(Quantizer):
    """Uniform affine fake quantizer. Kind "uniform_per_head": asymmetric, one scale per attention
    head (axis 1 of a [B, heads, N, d] matmul operand; the AdaLog / APHQ-ViT code family).

    Args:
        bits: code width.
        role: tensor role (weight, post_ln, ...).
        symmetric: zero point fixed at 0 with a signed code range.
        channel_axis: None for one scale per tensor, else the axis that gets its own scale
            (0 for weights, -1 for per-channel activations).
        search: how to pick the clipping range.
    """

    kind = "uniform"

    def __init__(
        self,
        bits: int,
        role: str,
        symmetric: bool = False,
        channel_axis: Optional[int] = None,
        search: RangeSearch = RangeSearch(),
    ) -> None:
        super().__init__(bits, role)
        self.symmetric = symmetric
        self.channel_axis = channel_axis
        self.search = search
        self.qmin, self.qmax = qrange(self.bits, symmetric)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.integral_zero_point = True  # set by set_params: picks fake_quant's exact fast path
        self.zero_point_free = True  # set by set_params: every zero point 0 (symmetric, or fitted so)

    @property
    def per_channel(self) -> bool:
        return self.channel_axis is not None

    def _as_2d(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return x.reshape(1, -1)
        return x.movedim(self.channel_axis, 0).reshape(x.shape[self.channel_axis], -1)

    def streams(self, numel: int, example: torch.Tensor) -> bool:
        """Above `search.max_samples` values: the exact search over chunks
        (`ptqbench.quant.streamed_search`), with memory for one chunk, per tensor or per channel."""
        groups = example.shape[self.channel_axis] if self.per_channel else 1
        return numel > self.search.max_samples and tails_fit(numel // groups, self.search, True)

    def _fit_streamed(self, each_input: EachInput, numel: int) -> None:
        candidates = streamed_candidates(each_input, numel, self.search, two_sided=True, rows=self._as_2d)
        lo, hi = streamed_pick_by_mse(each_input, candidates, _range_quantizer(self.bits, self.symmetric),
                                      rows=self._as_2d)
        scale, zero_point = params_from_range(lo, hi, self.bits, self.symmetric)
        if not self.per_channel:
            scale, zero_point = scale[0], zero_point[0]
        self.set_params(scale, zero_point, self.channel_axis)

    def _slices(self, x: torch.Tensor) -> EachInput:
        """Flat slices per tensor; per channel, slices along the first other dimension (each keeps
        every channel)."""
        if not self.per_channel:
            return over_slices(x, self.search.max_samples)
        return over_slices(x, self.search.max_samples, 1 if self.channel_axis % x.dim() == 0 else 0)

    def _fit(self, x: torch.Tensor) -> None:
        x2d = self._as_2d(x.float())
        if not self.per_channel:
            x2d = subsample(x2d, self.search.max_samples)
        scale, zero_point = fit_rows(x2d, self.bits, self.symmetric, self.search)
        if not self.per_channel:
            scale, zero_point = scale[0], zero_point[0]
        self.set_params(scale, zero_point, self.channel_axis)

    # -- the Hessian-guided search's interface (ptqbench.algorithms.hessian_search) --------------
    def search_candidates(self, x: torch.Tensor, alphas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per tensor: the min-max range of `x` scaled by each alpha. Per channel: none (the
        search picks a weight quantizer's alpha per output channel itself)."""
        if self.per_channel:
            return []
        lo, hi = x.min().reshape(1), x.max().reshape(1)
        return [params_from_range(a * lo, a * hi, self.bits, self.symmetric) for a in alphas]

    def search_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale.clone().reshape(1), self.zero_point.clone().reshape(1)

    def apply_search_params(self, params: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.set_params(params[0][0], params[1][0], None)

    def set_params(self, scale: torch.Tensor, zero_point: torch.Tensor, channel_axis: Optional[int]) -> None:
        """Install parameters directly (used by reparameterization, which turns per-channel
        into per-tensor, and by methods that compute scales themselves)."""
        self.channel_axis = channel_axis
        self.scale = scale.detach().clone().float().to(self.scale.device)
        self.zero_point = zero_point.detach().clone().float().to(self.scale.device)
        self.integral_zero_point = bool(torch.equal(self.zero_point, torch.round(self.zero_point)))
        self.zero_point_free = not bool(self.zero_point.any())
        self.calibrated = True
        self.version += 1

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None or t.dim() == 0 or t.dim() == x.dim():
            return t  # per tensor, or already laid out for x (a scale expanded by `expand_scale`)
        axis = self.channel_axis % x.dim()
        shape = [1] * x.dim()
        shape[axis] = -1
        return t.view(shape)

    def expand_scale(self, shape: tuple[int, ...]) -> None:
        """Give the scale the broadcast `shape` (e.g. one scale per token, [1, N, 1]), every entry
        starting at the current value; the zero point keeps its layout (FIMA-Q's
        `token_channel_wise`: the tokens' scales then train apart in reconstruction)."""
        if not self.calibrated:
            raise ValueError("expand_scale needs a calibrated quantizer")
        s = self._view(self.scale, torch.empty(shape, device="meta")) if self.scale.dim() else self.scale.reshape([1] * len(shape))
        self.scale = s.expand(shape).clone()
        self.version += 1

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        # per channel / per head with every zero point 0 (PTQ4ViT's symmetric q, k, v): a 0-dim zero
        # point gives fake_quant's scalar clamp bounds, the same values as the broadcast ones
        zero = self.zero_point.new_zeros(()) if self.zero_point_free else self._view(self.zero_point, x)
        return fake_quant(x, self._view(self.scale, x), zero, self.qmin, self.qmax, self.integral_zero_point)

    def elementwise_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of every element of `x` (shape of `x`), for methods that choose
        each weight's code themselves (GPTQ, ERQ's rounding refinement)."""
        return self._view(self.scale, x).expand_as(x), self._view(self.zero_point, x).expand_as(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes in [qmin, qmax] (as a float tensor)."""
        s, z = self._view(self.scale, x), self._view(self.zero_point, x)
        return torch.clamp(torch.round(x / s) + z, self.qmin, self.qmax)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self._view(self.zero_point, codes)) * self._view(self.scale, codes)

    def start_training(self, group: str) -> list[nn.Parameter]:
        """The "scale" group: the calibrated `scale` buffer becomes an nn.Parameter (LSQ: rounding is
        straight-through, so the loss has a gradient in the step size); the zero point stays a fixed
        integer."""
        if group != "scale" or not self.calibrated:
            return []
        if isinstance(self.scale, nn.Parameter):
            self.scale.requires_grad_(True)
            return [self.scale]
        value = self._buffers.pop("scale")
        self.scale = nn.Parameter(value.detach().clone())
        return [self.scale]

    def stop_training(self) -> None:
        """A learned scale becomes a buffer again (clamped positive); weight caches refresh."""
        if isinstance(self.scale, nn.Parameter):
            value = self._parameters.pop("scale").detach().clamp(min=1e-8)
            self.register_buffer("scale", value)
            self.version += 1

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            symmetric=self.symmetric,
            granularity="channel" if self.per_channel else "tensor",
            range=self.search.method,
        )
        return d
