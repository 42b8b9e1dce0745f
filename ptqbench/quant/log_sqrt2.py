"""Log-sqrt2 fake quantization for post-softmax activations (RepQ-ViT).

Codes q = clamp(round(-2 log2(x / D)), 0, 2^b - 1), dequantized as D * sqrt2^(-q); values whose
code would exceed the range (tiny probabilities, and exact zeros) become 0. D is picked among high
percentiles of x by MSE. Levels are dense near 0, where most attention probabilities live.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import register_kind
from ptqbench.quant.ranges import RangeSearch, pick_by_mse, quantiles, subsample
from ptqbench.quant.streamed_search import EachInput, over_slices, streamed_candidates, streamed_pick_by_mse, tails_fit


def log_sqrt2_fake_quant(x: torch.Tensor, delta: torch.Tensor, bits: int, per_octave: int = 2) -> torch.Tensor:
    """Quantize-dequantize with a log-sqrt2 grid below `delta`. One allocation plus in-place ops, as attention maps are the largest
    activations of a ViT. `per_octave=1` gives the log2 grid (FQ-ViT). Under autograd (block
    reconstruction) the gradient passes straight through the rounding (STE), so the layers before
    the attention map (q, k, their quantizers, the qkv weights) still get the reconstruction
    gradient; the in-place chain itself runs without autograd."""
    if torch.is_grad_enabled() and x.requires_grad:
        with torch.no_grad():
            y = log_sqrt2_fake_quant(x.detach(), delta, bits, per_octave)
        return x + (y - x).detach()
    # y holds the negated code -q = round(p log2(x / delta)) (rounding is symmetric, so this is
    # exactly -round(-p log2(x / delta))). Codes past the range (q >= 2^b, x == 0 included: -q =
    # -inf) become -inf through `threshold_`, and exp2(-inf) = 0. A bool mask with masked_fill
    # did the same in ~4x the time (comparisons and masked writes are slow passes on CPU).
    y = torch.div(x, delta)
    y.log2_().mul_(float(per_octave)).round_()
    F.threshold_(y, -float(2**bits), -math.inf)
    y.clamp_(max=0.0).mul_(1.0 / per_octave).exp2_()
    return y.mul_(delta)


def _positive(cands: list[tuple[torch.Tensor]]) -> list[tuple[torch.Tensor]]:
    """An all-zero input has no positive scale to find: any delta encodes it exactly (1 then)."""
    return [(torch.where(c[0] > 0, c[0], torch.ones_like(c[0])),) for c in cands]


@register_kind("log_sqrt2", search=True)
class LogSqrt2Quantizer(Quantizer):
    """Log-sqrt2 quantizer for non-negative activations (attention probabilities)."""

    kind = "log_sqrt2"

    def __init__(self, bits: int, role: str, search: RangeSearch = RangeSearch()) -> None:
        super().__init__(bits, role)
        self.search = search
        self.register_buffer("delta", torch.ones(()))

    def _check_non_negative(self, x: torch.Tensor) -> None:
        if (x < 0).any():
            raise ValueError(f"log-sqrt2 quantizer {self.qname!r} needs non-negative input (post-softmax)")

    def streams(self, numel: int, example: torch.Tensor) -> bool:
        """Above `search.max_samples` values: the exact search over chunks (`ptqbench.quant.streamed_search`)."""
        return numel > self.search.max_samples and tails_fit(numel, self.search, False)

    def _slices(self, x: torch.Tensor) -> EachInput:
        return over_slices(x, self.search.max_samples)

    def _fit(self, x: torch.Tensor) -> None:
        self._check_non_negative(x)
        x2d = subsample(x.float().reshape(1, -1), self.search.max_samples)
        if self.search.method == "minmax":
            cands = [(x2d.amax(dim=1),)]
        else:
            ps = list(self.search.percentiles) if self.search.method == "mse" else [self.search.percentiles[0]]
            qs = quantiles(x2d, ps)
            cands = [(qs[i],) for i in range(len(ps))]
        (delta,) = pick_by_mse(x2d, _positive(cands), self._quantize_rows)
        self.delta = delta[0].detach().clone()

    def _fit_streamed(self, each_input: EachInput, numel: int) -> None:
        def checked(fn: Callable[[torch.Tensor], None]) -> None:
            each_input(lambda chunk: (self._check_non_negative(chunk), fn(chunk)))
        cands = streamed_candidates(checked, numel, self.search, two_sided=False)
        (delta,) = streamed_pick_by_mse(each_input, _positive(cands), self._quantize_rows)
        self.delta = delta[0].detach().clone()

    def _quantize_rows(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return log_sqrt2_fake_quant(v, delta[:, None], self.bits)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return log_sqrt2_fake_quant(x, self.delta, self.bits)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes in [0, 2^b - 1]; -1 marks values that dequantize to 0 (code out of range)."""
        q = torch.round(-2.0 * torch.log2(x / self.delta))
        return torch.where(q >= 2**self.bits, torch.full_like(q, -1.0), torch.clamp(q, min=0.0))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        out = self.delta * torch.exp2(-0.5 * torch.clamp(codes, min=0.0))
        return torch.where(codes < 0, torch.zeros_like(out), out)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor", range=self.search.method)
        return d


@register_kind("log2")
class Log2Quantizer(Quantizer):
    """FQ-ViT's log2 quantizer for softmax outputs: q = clamp(round(-log2 x), 0, 2^b - 1), value
    2^-q (0 past the range). No parameter: probabilities never exceed 1, so attn @ v becomes
    shifts of v in integer hardware."""

    kind = "log2"

    def __init__(self, bits: int, role: str) -> None:
        super().__init__(bits, role)
        self.register_buffer("delta", torch.ones(()))

    def _fit(self, x: torch.Tensor) -> None:
        if (x < 0).any():
            raise ValueError(f"log2 quantizer {self.qname!r} needs non-negative input (softmax output)")

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return log_sqrt2_fake_quant(x, self.delta, self.bits, per_octave=1)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor", range="fixed")
        return d
