"""Quantized drop-in modules: Linear, Conv2d and the attention MatMul.

They share the float module's Parameters (no copy), so a patched model has the same state as the
original plus quantizer buffers. Fake-quantized weights are cached for inference and refreshed
whenever the weight tensor or its quantizer changes: evaluation pays for weight quantization once,
not per batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.quant.base import Quantizer
from ptqbench.quant.grid import Grid


class _WeightQuantMixin:
    """Shares the float module's parameters, holds the two quantizers and a cache of the
    fake-quantized weight."""

    weight: nn.Parameter
    input_quantizer: Optional[Quantizer]
    weight_quantizer: Optional[Quantizer]

    def _adopt(self, src: nn.Module, input_quantizer: Optional[Quantizer], weight_quantizer: Optional[Quantizer]) -> None:
        self.weight = src.weight
        self.bias = src.bias
        self.input_quantizer = input_quantizer
        self.weight_quantizer = weight_quantizer
        self._wq_cache: Optional[torch.Tensor] = None
        self._wq_key: Optional[tuple] = None

    def weight_matrix(self) -> torch.Tensor:
        """The weight as [Cout, fan_in] (a conv kernel flattened in im2col order)."""
        return self.weight.detach().reshape(self.weight.shape[0], -1)

    def bias_vector(self) -> torch.Tensor:
        """The bias, or zeros for a layer without one."""
        if self.bias is None:
            return torch.zeros(self.weight.shape[0], dtype=self.weight.dtype, device=self.weight.device)
        return self.bias.detach()

    @torch.no_grad()
    def set_weight_matrix(self, w2d: torch.Tensor, bias: Optional[torch.Tensor] = None) -> None:
        """Write new weights (and bias; a layer without one gets one) computed by a method."""
        self.weight.copy_(w2d.reshape(self.weight.shape).to(self.weight.dtype))
        if bias is not None:
            bias = bias.to(self.weight.dtype)
            if self.bias is None:
                self.bias = nn.Parameter(bias.clone())
            else:
                self.bias.copy_(bias)

    def weight_grid(self) -> Grid:
        """The calibrated weight quantizer's per-element grid over `weight_matrix()`."""
        wq = self.weight_quantizer
        if wq is None or not wq.calibrated or not hasattr(wq, "elementwise_params"):
            raise ValueError(f"{wq!r} gives no per-element grid (needs a calibrated uniform weight quantizer)")
        scale, zero = wq.elementwise_params(self.weight_matrix())
        return Grid(scale, zero, wq.qmin, wq.qmax)

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quantizer(x) if self.input_quantizer is not None else x

    def drop_cached_weights(self) -> None:
        """Free the cached fake-quantized weight (refilled on the next inference forward): a pass
        that will not come back to this layer need not hold it."""
        self._wq_cache, self._wq_key = None, None

    def quantized_weight(self) -> torch.Tensor:
        wq = self.weight_quantizer
        if wq is None or not wq.enabled:
            return self.weight
        if torch.is_grad_enabled() and (self.weight.requires_grad or any(p.requires_grad for p in wq.parameters())):
            return wq(self.weight)  # training-time path (reconstruction): no cache, gradients flow
        if torch.compiler.is_compiling() and self._wq_cache is not None:
            return self._wq_cache  # filled before compiling (ptqbench.pipeline.eval_module); a key check would break the graph
        key = (self.weight.data_ptr(), self.weight._version, wq.version, wq.calibrated)
        if self._wq_key != key or self._wq_cache is None:
            with torch.no_grad():
                self._wq_cache = wq(self.weight)
            self._wq_key = (self.weight.data_ptr(), self.weight._version, wq.version, wq.calibrated)
        return self._wq_cache


class QuantLinear(nn.Linear, _WeightQuantMixin):
    """nn.Linear with an input quantizer (activation) and a weight quantizer; either may be None.

    `compensation` (None unless a method sets it, e.g. AIQViT's low-rank branch) is an FP side
    branch applied to the same quantized input and added to the output. With `fold_compensation`
    (set by the method once training is over) and a branch that is linear in its input (it has
    `delta()`, the [Cout, Cin] matrix it applies), inference computes xq (Q(W) + delta)^T as one
    matmul: the same function as the two-path sum, with its own float rounding, and no second
    pass over the activations. Training (gradients on) always runs the two paths.
    """

    def __init__(self, linear: nn.Linear, input_quantizer: Optional[Quantizer], weight_quantizer: Optional[Quantizer]):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self._adopt(linear, input_quantizer, weight_quantizer)
        self.compensation: Optional[nn.Module] = None
        self.fold_compensation = False
        self._folded: Optional[torch.Tensor] = None
        self._folded_key: Optional[tuple] = None

    def drop_cached_weights(self) -> None:
        super().drop_cached_weights()
        self._folded, self._folded_key = None, None

    def folded_weight(self) -> torch.Tensor:
        """Q(W) + the compensation's delta, cached until the weight, its quantizer or the branch's
        parameters change (inference only)."""
        if torch.compiler.is_compiling() and self._folded is not None:
            return self._folded  # filled before compiling (ptqbench.pipeline.eval_module)
        wq = self.quantized_weight()
        params = tuple((p.data_ptr(), p._version) for p in self.compensation.parameters())
        key = (wq.data_ptr(), wq._version, self._wq_key, params)
        if self._folded_key != key or self._folded is None:
            with torch.no_grad():
                self._folded = wq.reshape(self.out_features, -1) + self.compensation.delta()
            self._folded_key = key
        return self._folded

    def folds(self) -> bool:
        """Whether inference multiplies by `folded_weight()` (the fold is on and the branch can fold)."""
        return self.fold_compensation and self.compensation is not None and hasattr(self.compensation, "delta")

    def inference_weight(self) -> torch.Tensor:
        """The weight an inference forward multiplies by."""
        return self.folded_weight() if self.folds() else self.quantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self._quant_input(x)
        if not torch.is_grad_enabled() and self.folds():
            return F.linear(xq, self.folded_weight(), self.bias)
        out = F.linear(xq, self.quantized_weight(), self.bias)
        if self.compensation is not None:
            comp = self.compensation(xq)
            out = out + comp if torch.is_grad_enabled() else out.add_(comp)
        return out


class QuantConv2d(nn.Conv2d, _WeightQuantMixin):
    """nn.Conv2d with an input quantizer and a weight quantizer (the patch embedding)."""

    def __init__(self, conv: nn.Conv2d, input_quantizer: Optional[Quantizer], weight_quantizer: Optional[Quantizer]):
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device="meta",
        )
        self._adopt(conv, input_quantizer, weight_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self.quantized_weight(), self.bias)


class QuantMatMul(nn.Module):
    """a @ b with each operand quantized by its own quantizer (None = FP operand)."""

    def __init__(self, a_quantizer: Optional[Quantizer], b_quantizer: Optional[Quantizer]):
        super().__init__()
        self.a_quantizer = a_quantizer
        self.b_quantizer = b_quantizer

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a_in, b_in = a, b
        if self.a_quantizer is not None:
            self.a_quantizer.see_matmul_operand(b_in, left=True)
            a = self.a_quantizer(a_in)
        if self.b_quantizer is not None:
            self.b_quantizer.see_matmul_operand(a_in, left=False)
            b = self.b_quantizer(b_in)
        return a @ b


def drop_cached_weights(model: nn.Module) -> None:
    """Free every layer's cached fake-quantized weights (`_WeightQuantMixin.drop_cached_weights`)."""
    for m in model.modules():
        if isinstance(m, _WeightQuantMixin):
            m.drop_cached_weights()
