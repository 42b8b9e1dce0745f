"""Power-of-two factor (PTF) quantization of LayerNorm inputs (FQ-ViT, IJCAI 2022).

The residual stream has a few channels with ranges tens of times the others. PTF keeps one
layer-wise zero point and gives each channel c (last axis) the scale s * 2^alpha_c, alpha_c in
0..K: the layer-wise scale s_max = (max - min) / (2^b - 1) is split as s = s_max / 2^K, and each
channel picks the alpha_c with the least squared error on its calibration values. In integer
LayerNorm the factors are shifts, so the mean and variance stay integer sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import register_kind
from ptqbench.quant.uniform import fake_quant, params_from_range, qrange


@dataclass(frozen=True)
class PTFOptions:
    """k: the largest power-of-two factor between channels (factors 2^0 .. 2^k)."""

    k: int = 3


@register_kind("ptf", options=PTFOptions)
class PTFQuantizer(Quantizer):
    """Per-channel power-of-two scales over one shared zero point (FQ-ViT's PTF).

    Args:
        bits: code width (unsigned, asymmetric).
        role: ln_in.
        k: largest power-of-two factor exponent (FQ-ViT: 3).
    """

    kind = "ptf"

    def __init__(self, bits: int, role: str, k: int = 3) -> None:
        super().__init__(bits, role)
        if k < 0:
            raise ValueError(f"PTF k must be >= 0, got {k}")
        self.k = int(k)
        self.qmin, self.qmax = qrange(self.bits, False)
        self.register_buffer("scale", torch.ones(0))
        self.register_buffer("zero_point", torch.zeros(()))

    def _fit(self, x: torch.Tensor) -> None:
        x2 = x.float().reshape(-1, x.shape[-1])
        s_max, z = params_from_range(x2.min().reshape(1), x2.max().reshape(1), self.bits, False)
        best_s, best_err = None, None
        for alpha in range(self.k + 1):
            s = s_max / 2.0 ** (self.k - alpha)
            err = (fake_quant(x2, s, z, self.qmin, self.qmax) - x2).pow(2).mean(0)
            s_c = s.expand(x2.shape[1])
            if best_s is None:
                best_s, best_err = s_c.clone(), err
            else:
                better = err < best_err
                best_s = torch.where(better, s_c, best_s)
                best_err = torch.where(better, err, best_err)
        self.scale, self.zero_point = best_s, z[0]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="channel_pow2", k=self.k)
        if self.calibrated:
            alpha = torch.round(torch.log2(self.scale / self.scale.min())).long()
            d["channels_per_factor"] = {str(2**a): int((alpha == a).sum()) for a in range(int(alpha.max()) + 1)}
        return d
