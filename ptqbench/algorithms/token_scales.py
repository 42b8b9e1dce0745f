"""FIMA-Q's token-wise activation scales (`token_channel_wise=True` in its `configs/*/best.py`).

After the grid search, the released code expands each searched activation scale so that every
token gets its own copy, which block reconstruction then trains apart (ShiheWang/FIMA-Q @ 64c4b00,
`quant_layers/linear.py: AsymmetricallyBatchingQuantLinear.hyperparameter_searching`, and
`quant_layers/matmul.py: AsymmetricallyBatchingQuantMatMul.hyperparameter_searching`):

- a Linear whose input is 3-D [B, N, C]: its per-tensor input scale becomes [1, N, 1];
- a matmul A @ B with A [B, H, N, M] and B [B, H, M, P]: A's per-head scale becomes [1, H, N, 1]
  (one per row of A: query token, or attention row), B's [1, H, 1, P] (one per column of B: key
  token for k^T, channel for v).

Zero points keep their layout. The expanded scales equal the searched ones until training moves
them, so the order against the grid search does not matter (each layer's search reads only its
own quantizers). The shapes are read from one forward pass of one calibration image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptqbench.algorithms.streaming import hooks_removed_after
from ptqbench.quant.modules import QuantLinear, QuantMatMul
from ptqbench.quant.uniform import UniformQuantizer


def _eligible(q: Any) -> bool:
    return isinstance(q, UniformQuantizer) and q.enabled and q.calibrated


@torch.no_grad()
def expand_token_scales(model: nn.Module, sample: torch.Tensor) -> int:
    """Expand the activation scales of `model` as FIMA-Q does (module docstring), from the shapes
    one forward pass of `sample` (one image) shows; returns how many scales were expanded."""
    shapes: dict[int, tuple[UniformQuantizer, tuple[int, ...]]] = {}

    def linear_hook(m: QuantLinear, args: tuple) -> None:
        q, x = m.input_quantizer, args[0]
        if _eligible(q) and not q.per_channel and x.dim() == 3:
            shapes[id(q)] = (q, (1, x.shape[1], 1))

    def matmul_hook(m: QuantMatMul, args: tuple) -> None:
        a, b = args[0], args[1]
        if a.dim() != 4 or b.dim() != 4:
            return
        if _eligible(m.a_quantizer):
            shapes[id(m.a_quantizer)] = (m.a_quantizer, (1, a.shape[1], a.shape[2], 1))
        if _eligible(m.b_quantizer):
            shapes[id(m.b_quantizer)] = (m.b_quantizer, (1, b.shape[1], 1, b.shape[3]))

    handles = []
    for m in model.modules():
        if isinstance(m, QuantLinear):
            handles.append(m.register_forward_pre_hook(linear_hook))
        elif isinstance(m, QuantMatMul):
            handles.append(m.register_forward_pre_hook(matmul_hook))
    with hooks_removed_after(handles):
        model(sample)
    for q, shape in shapes.values():
        q.expand_scale(shape)
    return len(shapes)
