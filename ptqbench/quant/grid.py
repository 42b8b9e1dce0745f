"""The integer grid of a per-channel weight quantizer, as the weight solvers (GPTQ, ERQ) use it:
codes by round/floor/ceil and their dequantized values, column by column."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Grid:
    """Per-element scale and zero point of a weight matrix and the integer code range."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int

    def dequant(self, codes: torch.Tensor, cols: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        return (codes - self.zero_point[:, cols]) * self.scale[:, cols]

    def codes(self, w: torch.Tensor, mode: str, cols: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Integer codes of `w` (the columns `cols` of the weight) by round, floor or ceil."""
        op = {"round": torch.round, "floor": torch.floor, "ceil": torch.ceil}[mode]
        return torch.clamp(op(w.float() / self.scale[:, cols]) + self.zero_point[:, cols], self.qmin, self.qmax)
