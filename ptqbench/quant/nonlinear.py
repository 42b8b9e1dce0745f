"""Quantized non-linear ops of the fully quantized mode (`quant.full=true`): softmax and GELU.

The softmax takes a quantized input (role softmax_in) and, with `lut_bits`, computes exp the way
an integer kernel with a lookup table does: the input has at most 2^b levels, so x - max(x) takes
at most 2^b values and exp of each comes from a table whose entries are fixed-point numbers with
`lut_bits` fractional bits; the sum is an integer sum of table entries and the division gives the
probabilities, which the next quantizer (post_softmax, the method's choice) encodes. Without an
enabled input quantizer (role left out, or quantization switched off) the softmax is the float one. GELU gets a
quantized input (role gelu_in); its output is the fc2 input (post_gelu), quantized as in the
common protocol.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ptqbench.quant.base import Quantizer


def lut_exp(x: torch.Tensor, lut_bits: int) -> torch.Tensor:
    """exp(x) for x <= 0, rounded to `lut_bits` fractional bits (a table entry)."""
    step = 2.0**lut_bits
    return torch.round(torch.exp(x) * step) / step


class QuantSoftmax(nn.Module):
    """softmax(Q(x)) with a table-driven exp (see the module docstring)."""

    def __init__(self, input_quantizer: Optional[Quantizer], lut_bits: Optional[int] = None, dim: int = -1) -> None:
        super().__init__()
        self.input_quantizer = input_quantizer
        self.lut_bits = lut_bits
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.input_quantizer
        if q is None or not q.enabled or self.lut_bits is None:  # a table needs a quantized input
            return (x if q is None else q(x)).softmax(dim=self.dim)
        x = q(x)
        e = lut_exp(x - x.amax(dim=self.dim, keepdim=True), self.lut_bits)
        return e / e.sum(dim=self.dim, keepdim=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, lut_bits={self.lut_bits}"


class QuantAct(nn.Module):
    """An activation function (timm Mlp's GELU) with a quantized input."""

    def __init__(self, act: nn.Module, input_quantizer: Optional[Quantizer]) -> None:
        super().__init__()
        self.act = act
        self.input_quantizer = input_quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return self.act(x)
