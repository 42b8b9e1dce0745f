"""Dynamic focusing quantizer (DFQ) for post-softmax activations (AIQViT).

AIQViT's argument: log quantizers spend their levels on tiny probabilities that carry little
information. DFQ instead quantizes uniformly inside a *learned* interval [b1, b2], so the
resolution goes where the error says it matters. Values above b2 clamp to b2. What happens below
b1 is the `below` option:

* ``below="clamp"`` (default): the paper's only description, "values outside the learned interval
  map to its bounds": 2^b levels on [b1, b2], everything below b1 clamped up to b1,
  s = (b2 - b1) / (2^b - 1).

* ``below="zero"``: ptqbench's variant, code 0 is exact zero and the other 2^b - 1 codes are spread
  uniformly over [b1, b2]; x is rounded to the nearest of these levels, so values under b1 / 2
  become 0 and values in [b1 / 2, b1) become b1. b1 >= 0 (a negative b1 is read as 0):

      x^ = 0                                            if x < b1 / 2
      x^ = b1 + s * round((clamp(x, b1, b2) - b1) / s)  otherwise,   s = (b2 - b1) / (2^b - 2)

Why "zero" exists (measured, docs/methods/aiq.md; it was the default until the issue-18 re-read
made the paper's description the default): a post-softmax row has ~200 entries,
most of them ~1e-3. With "clamp", zero is on the grid only while b1 is exactly 0; as soon as
training moves b1 (it does, to about +-2e-3) every small entry is shifted by b1 and a row's mass
changes by ~200 b1 (+-0.4). And with b1 = 0 a 4-bit grid wide enough not to clip the large
probabilities zeroes every entry below s / 2, losing much of the row's mass. Keeping 0 as a level
and focusing the remaining levels on [b1, b2] fixes both: the small entries go to 0 or b1, the
large ones get the uniform resolution. That is our reading of "dynamically selects the most
valuable interval for higher quantization resolution" instead of "less informative values around
zero"; the sources at hand do not give the paper's formulas (docs/methods/aiq.md).

Initialization (`init`): a grid search over b1 in {0} + `lower_percentiles` of the data
("zero" only; "clamp" keeps b1 = min(x, 0)) and b2 in `upper_percentiles` + `max_fractions` x max.
* ``init="output"`` (default): the candidate with the least error of the attention *output*
  Q(A) @ V, V being the other operand of the matmul (QuantMatMul hands it over before
  calibration; without one the output error degenerates to the MSE of A). Clipping a large
  probability or zeroing many small ones shifts a row's mass, and (presumably because V's rows
  share a common component) that costs more in A @ V than the MSE on A says: offline, the MSE
  pick's A @ V error was up to 4.5x the output pick's in the late blocks.
* ``init="mse"``: the least MSE on A (the first reading).
Block reconstruction then trains b1 and b2 with Adam (gradients through the clamp and the step
size, rounding straight-through; AIQViT's `lr_dfq`, default 1e-4: b1 lives around 5e-3, and at
1e-3 thirty Adam steps moved it to ~3e-2). Outside reconstruction they are plain constants.

Measured (DeiT-T W4A4, CPU reconstruction setting of docs/results.md, 1300 val images; RepQ-ViT
68.77, AIQViT with log-sqrt2 instead of DFQ 74.00):
    clamp + mse init, lr_dfq 1e-3 (the first reading)   58.46
    clamp + output init, lr_dfq 1e-4                    71.31
    zero + output init, lr_dfq 1e-3                     70.15
    zero + output init, lr_dfq 1e-4 (default)           72.85
    zero + output init, lr_dfq 0 (initialization only)  72.54
Offline, on 4 calibration images' attention maps, the summed relative error of A @ V over the 12
blocks is 4.13 for the first reading, 0.45 for zero + output init and 0.40 for log-sqrt2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.quant.base import Quantizer, round_ste
from ptqbench.quant.kinds import register_kind
from ptqbench.quant.ranges import attention_slices, quantiles, subsample

DEFAULT_UPPER_PERCENTILES = (0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0)
DEFAULT_LOWER_PERCENTILES = (0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_MAX_FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.7)
BELOW_MODES = ("zero", "clamp")
INIT_METRICS = ("output", "mse")


def focus_fake_quant(x: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, bits: int,
                     below: str = "clamp") -> torch.Tensor:
    """Quantize-dequantize on the DFQ grid of [b1, b2] (see the module docstring); differentiable
    in b1, b2 (straight-through rounding)."""
    if below not in BELOW_MODES:
        raise ValueError(f"below={below!r}; choose one of {BELOW_MODES}")
    if below == "zero" and bits < 2:
        raise ValueError("DFQ with below='zero' needs at least 2 bits (one code is the zero)")
    if (x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or b1.requires_grad or b2.requires_grad))):
        # inference on the CPU: the same float operations in the same order, on one buffer
        # (each out-of-place step allocated an attention-map-sized temporary)
        lo = _lower_bound(b1, below)
        lo_, hi_, st = float(lo), float(b2), float((b2 - lo).clamp(min=1e-8) / _levels(bits, below))
        if below == "zero":
            return _focus_zero_inplace(x, lo_, hi_, st)
        return x.clamp(lo_, hi_).sub_(lo_).div_(st).round_().mul_(st).add_(lo_)
    return _FocusSTE.apply(x, b1, b2, bits, below)


def focus_ste_expression(x: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, bits: int,
                         below: str = "clamp") -> torch.Tensor:
    """DFQ as the plain straight-through expression: the definition `_FocusSTE` reproduces bit
    for bit, values and gradients (the reference of its tests and of scripts/time_recon_functions.py;
    as an expression autograd keeps several attention-map-sized tensors per step)."""
    lo = _lower_bound(b1, below)
    step = (b2 - lo).clamp(min=1e-8) / _levels(bits, below)
    y = lo + step * round_ste((torch.minimum(torch.maximum(x, lo), b2) - lo) / step)
    return torch.where(x < lo / 2, torch.zeros_like(y), y) if below == "zero" else y


def _focus_steps(x: torch.Tensor, lo: torch.Tensor, b2: torch.Tensor, levels: int) -> tuple[torch.Tensor, ...]:
    """The straight-through expression's tensors that its gradients read, for `levels` steps on
    [lo, b2]: the span b2 - lo, the step, max(x, lo), the offset min(max(x, lo), b2) - lo and the
    code, rounded straight through."""
    span = b2 - lo
    step = span.clamp(min=1e-8) / levels
    raised = torch.maximum(x, lo)
    clamped = torch.minimum(raised, b2)
    offset = clamped - lo
    scaled = offset / step
    return span, step, raised, offset, scaled + (torch.round(scaled) - scaled)


def _lower_bound(b1: torch.Tensor, below: str) -> torch.Tensor:
    """The interval's lower bound: b1, or max(b1, 0) when one code is the zero (a negative b1 is read as 0)."""
    return b1.clamp(min=0.0) if below == "zero" else b1


def _levels(bits: int, below: str) -> int:
    """Steps between the interval's bounds: 2^b - 1, or 2^b - 2 when one code is the zero."""
    return 2**bits - 1 if below == "clamp" else 2**bits - 2


class _FocusSTE(torch.autograd.Function):
    """DFQ with straight-through rounding, saving only x, b1 and b2. As an expression autograd
    saves max(x, b1), the clamped offset and the code besides x (and, for below="zero", the mask
    of x < b1 / 2): three attention-map-sized tensors or more per quantizer and step. The backward
    recomputes them and runs autograd's formulas (WhereBackward0 for "zero", AddBackward0,
    MulBackward0, DivBackward0, SubBackward0, MinimumBackward0, MaximumBackward0, DivBackward1,
    ClampMinBackward0, and for "zero" b1's ClampMinBackward0), reducing each contribution to the
    bounds and adding them in the order autograd's engine does, so values and gradients are bit
    for bit the same (tests/quant/test_fast_paths.py)."""

    @staticmethod
    def forward(ctx, x, b1, b2, bits: int, below: str):  # type: ignore[override]
        ctx.save_for_backward(x, b1, b2)
        ctx.bits, ctx.below = bits, below
        lo = _lower_bound(b1, below)
        _, step, _, _, code = _focus_steps(x, lo, b2, _levels(bits, below))
        out = lo + step * code
        return out.masked_fill_(x < lo / 2, 0.0) if below == "zero" else out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, b1, b2 = ctx.saved_tensors
        need_x, need_b1, need_b2, _, _ = ctx.needs_input_grad
        zero, levels = ctx.below == "zero", _levels(ctx.bits, ctx.below)
        lo = _lower_bound(b1, ctx.below)
        span, step, raised, offset, code = _focus_steps(x, lo, b2, levels)
        if zero:  # out = where(x < lo / 2, 0, y)
            grad = torch.where(x < lo / 2, 0.0, grad)  # masked_fill would make it contiguous: sums in another order
        g_lo = grad.sum_to_size(lo.shape) if need_b1 else None  # y = lo + step * code
        g_step = (grad * code).sum_to_size(step.shape) if need_b1 or need_b2 else None
        del code
        g_code = grad * step  # code = offset / step, rounded straight through
        g_offset = g_code / step
        if g_step is not None:
            g_step = g_step + (-g_code * ((offset / step) / step)).sum_to_size(step.shape)
        del g_code, offset
        if need_b1:
            g_lo = g_lo + (-g_offset).sum_to_size(lo.shape)  # offset = clamped - lo
        ties = raised == b2  # clamped = min(raised, b2)
        g_raised = torch.where(ties, g_offset / 2, g_offset).masked_fill_(raised > b2, 0)
        g_b2 = None
        if need_b2:
            g_b2 = torch.where(ties, g_offset / 2, g_offset).masked_fill_(raised < b2, 0).sum_to_size(b2.shape)
        del raised, ties, g_offset
        ties = x == lo  # raised = max(x, lo)
        g_x = torch.where(ties, g_raised / 2, g_raised).masked_fill_(x < lo, 0) if need_x else None
        if need_b1:
            g_lo = g_lo + torch.where(ties, g_raised / 2, g_raised).masked_fill_(x > lo, 0).sum_to_size(lo.shape)
        if g_step is not None:  # step = clamp(span, min=1e-8) / levels, span = b2 - lo
            g_span = torch.where(span >= 1e-8, g_step / levels, 0.0)
            g_b2 = g_b2 + g_span if need_b2 else None
            g_lo = g_lo + (-g_span) if need_b1 else None
        g_b1 = torch.where(b1 >= 0.0, g_lo, 0.0) if zero and need_b1 else g_lo  # lo = clamp(b1, min=0)
        return g_x, g_b1, g_b2, None, None


def _focus_zero_inplace(x: torch.Tensor, lo: float, b2: float, step: float) -> torch.Tensor:
    """`focus_fake_quant(below="zero")` at inference on the CPU: the same float operations in the
    same order on one buffer, with scalar bounds (a clamp with tensor bounds, a comparison and
    `torch.where` are each several times slower than an in-place pass on CPU; each pass over an
    attention map is the cost, so the count of passes is what this minimizes).

    Values below lo / 2 must become 0, NaN must stay NaN. With lo = 0 (and b2 > 0) the threshold
    at 0 already gives 0 there: five passes. Otherwise they are marked NaN by the first pass (NaN
    survives the clamp and the arithmetic) and zeroed by the last: eight passes plus a read-only
    sum that finds NaN inputs, against ten for multiplying by a 0/1 (NaN for NaN) mask of x, which
    still serves an input that holds NaN."""
    if lo == 0.0 and b2 > 0.0:
        y = F.threshold(x, 0.0, 0.0)  # max(x, 0); NaN stays NaN (threshold replaces x <= 0 only)
        return y.clamp_(max=b2).div_(step).round_().mul_(step)
    half = torch.tensor(lo / 2, dtype=x.dtype)
    below_half = float(torch.nextafter(half, torch.tensor(-math.inf, dtype=x.dtype)))  # x > it <=> x >= lo / 2
    if torch.isnan(x.sum()):
        y = F.threshold(x, lo, lo)  # max(x, lo)
        y.clamp_(max=b2).sub_(lo).div_(step).round_().mul_(step).add_(lo)
        return y.mul_(F.threshold(x, below_half, 0.0).sign_())  # 0 below lo / 2, NaN for NaN
    y = F.threshold(x, below_half, math.nan)  # x < lo / 2 -> NaN
    y.clamp_(lo, b2).sub_(lo).div_(step).round_().mul_(step).add_(lo)
    return y.nan_to_num_(nan=0.0)


@dataclass(frozen=True)
class DynamicFocusOptions:
    """The constructor's arguments (see `DynamicFocusQuantizer`)."""

    upper_percentiles: tuple[float, ...] = DEFAULT_UPPER_PERCENTILES
    lower_percentiles: tuple[float, ...] = DEFAULT_LOWER_PERCENTILES
    max_fractions: tuple[float, ...] = DEFAULT_MAX_FRACTIONS
    below: str = "clamp"
    init: str = "output"
    max_samples: int = 1 << 20


@register_kind("dynamic_focus", options=DynamicFocusOptions)
class DynamicFocusQuantizer(Quantizer):
    """DFQ with learnable interval bounds `b1`, `b2` (see the module docstring).

    Args:
        upper_percentiles: candidate b2 (percentiles of the calibration data, in (0.5, 1]).
        lower_percentiles: candidate b1 besides 0, below="zero" only (in (0, 1)).
        max_fractions: further candidate b2 as fractions of the data's maximum (in (0, 1]).
        below: "zero" or "clamp".
        init: "output" or "mse".
        max_samples: elements of the attention map the search looks at (whole rows are kept).
    """

    kind = "dynamic_focus"

    def __init__(self, bits: int, role: str, upper_percentiles: Sequence[float] = DEFAULT_UPPER_PERCENTILES,
                 lower_percentiles: Sequence[float] = DEFAULT_LOWER_PERCENTILES,
                 max_fractions: Sequence[float] = DEFAULT_MAX_FRACTIONS, below: str = "clamp",
                 init: str = "output", max_samples: int = 1 << 20) -> None:
        super().__init__(bits, role)
        if not upper_percentiles or any(not 0.5 < float(p) <= 1.0 for p in upper_percentiles):
            raise ValueError(f"DFQ upper percentiles must lie in (0.5, 1], got {list(upper_percentiles)}")
        if any(not 0.0 < float(p) < 1.0 for p in lower_percentiles):
            raise ValueError(f"DFQ lower percentiles must lie in (0, 1), got {list(lower_percentiles)}")
        if any(not 0.0 < float(f) <= 1.0 for f in max_fractions):
            raise ValueError(f"DFQ max fractions must lie in (0, 1], got {list(max_fractions)}")
        if below not in BELOW_MODES:
            raise ValueError(f"DFQ below={below!r}; choose one of {BELOW_MODES}")
        if init not in INIT_METRICS:
            raise ValueError(f"DFQ init={init!r}; choose one of {INIT_METRICS}")
        if below == "zero" and bits < 2:
            raise ValueError("DFQ with below='zero' needs at least 2 bits (one code is the zero)")
        self.upper_percentiles = tuple(float(p) for p in upper_percentiles)
        self.lower_percentiles = tuple(float(p) for p in lower_percentiles)
        self.max_fractions = tuple(float(f) for f in max_fractions)
        self.below = below
        self.init = init
        self.max_samples = max_samples
        self.operand: Optional[torch.Tensor] = None  # V of A @ V, set by QuantMatMul for calibration
        self.b1 = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.b2 = nn.Parameter(torch.ones(()), requires_grad=False)

    def see_matmul_operand(self, other: torch.Tensor, left: bool) -> None:
        """Keep V of A @ V when the next calibration measures the output error (init="output")."""
        if left and self.init == "output" and self.enabled and self.auto_calibrate and not self.calibrated:
            self.operand = other.detach()

    def start_training(self, group: str) -> list[nn.Parameter]:
        """The bounds b1, b2 train as the "interval" group (after calibration)."""
        if group != "interval" or not self.calibrated:
            return []
        for p in (self.b1, self.b2):
            p.requires_grad_(True)
        return [self.b1, self.b2]

    def stop_training(self) -> None:
        if self.b1.requires_grad or self.b2.requires_grad:
            self.b1.requires_grad_(False)
            self.b2.requires_grad_(False)
            self.version += 1

    def _search_view(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return attention_slices(x, self.operand, self.max_samples)

    def _fit(self, x: torch.Tensor) -> None:
        try:
            xs, vs = self._search_view(x.detach())
        finally:
            self.operand = None
        flat = subsample(xs.reshape(1, -1), 1 << 22)
        top = flat.max()
        uppers = [u for u in quantiles(flat, self.upper_percentiles)[:, 0]]
        uppers += [top * f for f in self.max_fractions]
        if self.below == "zero":
            lowers = [torch.zeros((), device=flat.device)]
            lowers += [lo.clamp(min=0.0) for lo in quantiles(flat, self.lower_percentiles)[:, 0]]
        else:
            lowers = [flat.min().clamp(max=0.0)]
        ref = xs @ vs if (self.init == "output" and vs is not None) else None
        best, best_err = None, None
        for lo in lowers:
            for hi in uppers:
                if float(hi) <= float(lo) + 1e-6:
                    continue
                q = focus_fake_quant(xs, lo, hi, self.bits, self.below)
                err = float((q @ vs - ref).pow(2).mean()) if ref is not None else float((q - xs).pow(2).mean())
                if best_err is None or err < best_err:
                    best, best_err = (lo, hi), err
        if best is None:  # degenerate data (all equal): an interval just above it
            best = (lowers[0], lowers[0] + 1e-6)
        self.b1.data = best[0].detach().clone().reshape(()).to(self.b1.device)
        self.b2.data = best[1].detach().clone().reshape(()).to(self.b2.device)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return focus_fake_quant(x, self.b1, self.b2, self.bits, self.below)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor", b1=float(self.b1), b2=float(self.b2), below=self.below, init=self.init)
        return d
