"""Dynamic focusing quantizer (DFQ) for post-softmax activations (AIQViT).

AIQViT's argument: log quantizers spend their levels on tiny probabilities that carry little
information. DFQ instead quantizes uniformly inside a *learned* interval [b1, b2] and clamps
values outside it to the interval's ends, so the resolution goes where the block-output error
says it matters:

    x^ = b1 + s * round((clamp(x, b1, b2) - b1) / s),    s = (b2 - b1) / (2^b - 1)

b1 and b2 are nn.Parameters: calibration initializes them (b1 = 0, b2 the candidate upper bound
among high percentiles and 1.0 with the least MSE), block reconstruction trains them with Adam
(gradients through the clamp and the step size, rounding straight-through). Outside
reconstruction they are plain constants.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ptqbench.quant.base import Quantizer, round_ste
from ptqbench.quant.ranges import quantiles, subsample

DEFAULT_UPPER_PERCENTILES = (0.99, 0.999, 0.9999, 1.0)


def focus_fake_quant(x: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, bits: int) -> torch.Tensor:
    """Uniform quantize-dequantize inside [b1, b2], clamped outside (differentiable in b1, b2)."""
    n = 2**bits - 1
    step = (b2 - b1).clamp(min=1e-8) / n
    xc = torch.minimum(torch.maximum(x, b1), b2)
    return b1 + step * round_ste((xc - b1) / step)


class DynamicFocusQuantizer(Quantizer):
    """DFQ with learnable interval bounds `b1`, `b2` (see the module docstring)."""

    kind = "dynamic_focus"

    def __init__(self, bits: int, role: str, upper_percentiles: Sequence[float] = DEFAULT_UPPER_PERCENTILES,
                 max_samples: int = 1 << 22) -> None:
        super().__init__(bits, role)
        if not upper_percentiles or any(not 0.5 < float(p) <= 1.0 for p in upper_percentiles):
            raise ValueError(f"DFQ upper percentiles must lie in (0.5, 1], got {list(upper_percentiles)}")
        self.upper_percentiles = tuple(float(p) for p in upper_percentiles)
        self.max_samples = max_samples
        self.b1 = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.b2 = nn.Parameter(torch.ones(()), requires_grad=False)

    def _fit(self, x: torch.Tensor) -> None:
        v = subsample(x.float().reshape(1, -1), self.max_samples)
        lo = v.min().clamp(max=0.0)
        uppers = quantiles(v, self.upper_percentiles)[:, 0]
        best, best_err = None, None
        for hi in uppers:
            hi = torch.maximum(hi, lo + 1e-6)
            err = float((focus_fake_quant(v, lo, hi, self.bits) - v).pow(2).mean())
            if best_err is None or err < best_err:
                best, best_err = hi, err
        self.b1.data = lo.detach().clone().to(self.b1.device)
        self.b2.data = best.detach().clone().to(self.b2.device)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return focus_fake_quant(x, self.b1, self.b2, self.bits)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor", b1=float(self.b1), b2=float(self.b2))
        return d
