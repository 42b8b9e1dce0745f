"""Unfused, quantizable versions of timm's attention modules.

Each class subclasses the timm module and only overrides `forward`, so parameters, buffers and
state-dict names stay timm's. `adopt()` turns an existing instance into the quantizable class
(no copy) and attaches a QuantMatMul for q @ k^T and one for attn @ v: the fused
`scaled_dot_product_attention` path, which hides both products and the softmax, is never taken.

q is multiplied by 1/sqrt(d) before its quantizer, as timm's FP path does; with `scale_product`
(QuantPlan.attention_scale="product") the dequantized q @ k^T is scaled instead, as the RepQ-ViT
code family does. Per-tensor uniform quantization is scale-equivariant (the calibrated range scales
with q), so both give the same function up to float rounding; scaling q touches 3x fewer elements
than scaling the N x N attention map, the product order reproduces the released codes' ties.

In the fully quantized mode `adopt()` also takes a `QuantSoftmax` (quantized input, table-driven
exp) that replaces the float softmax.

`timm_fp_attention()` hands a model's attention back to timm's own forward, fused
(`scaled_dot_product_attention`) where timm chose it when it built the module (ViT/DeiT on this
timm; Swin's window attention stays unfused), for an FP copy that must compute what the plain timm
model computes, bit for bit: an FP teacher whose outputs feed a finite difference (APHQ-ViT's
perturbation Hessian), where the rounding of the unfused products would otherwise show. Its matmul
quantizers are bypassed, so such a module refuses to run with any of them on.

Swin's window attention receives windows that the block zero-padded to a multiple of the window.
`input_shift` (None until a reparameterization sets it) is added to every token of those windows
before qkv, so the reparameterization's shift applies after the padding (ptqbench.algorithms.reparam).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from timm.models.swin_transformer import WindowAttention
from timm.models.vision_transformer import Attention

from ptqbench.errors import ConfigError
from ptqbench.quant.base import Quantizer
from ptqbench.quant.modules import QuantMatMul
from ptqbench.quant.nonlinear import QuantSoftmax


def scaled_qk(module: nn.Module, q: torch.Tensor, k_t: torch.Tensor) -> torch.Tensor:
    """scale * (q @ k^T) through `module.matmul_qk`, the scale on q or on the product."""
    if getattr(module, "scale_product", False):
        return module.matmul_qk(q, k_t) * module.scale
    return module.matmul_qk(q * module.scale, k_t)


def _check_attrs(module: torch.nn.Module, attrs: tuple[str, ...]) -> None:
    missing = [a for a in attrs if not hasattr(module, a)]
    if missing:
        raise ConfigError(
            f"{type(module).__name__} lacks {missing}: this timm version's attention differs from the "
            "one ptqbench patches (tested with timm 1.0.x); install the pinned timm (constraints.txt)"
        )


def timm_fp_attention(model: nn.Module) -> int:
    """Run every quantizable attention of `model` as timm built it: fused where timm chose the fused
    path (see the module docstring); returns how many now run fused. For FP copies only: a fused
    module refuses quantized matmuls."""
    n = 0
    for m in model.modules():
        if isinstance(m, (QuantAttention, QuantWindowAttention)):
            m.fused_attn = m.timm_fused_attn
            n += int(m.fused_attn)
    return n


def _check_fp(module: nn.Module) -> None:
    """timm's fused forward has no place for ptqbench's matmul and softmax quantizers nor for the
    window shift: refuse it unless the module is FP (every quantizer in it off)."""
    if any(isinstance(m, Quantizer) and m.enabled for m in module.modules()) or \
            getattr(module, "input_shift", None) is not None:
        raise RuntimeError(f"{type(module).__name__} runs timm's fused FP attention (timm_fp_attention) but "
                           "has a quantizer on or a reparameterization shift: use it as an FP copy only, "
                           "with quantization off (quant_disabled)")


class QuantAttention(Attention):
    """timm ViT/DeiT `Attention` with quantizable matmuls."""

    matmul_qk: QuantMatMul
    matmul_av: QuantMatMul
    softmax_op: Optional[QuantSoftmax]

    @classmethod
    def adopt(cls, module: Attention, matmul_qk: QuantMatMul, matmul_av: QuantMatMul,
              softmax: Optional[QuantSoftmax] = None, scale_product: bool = False) -> "QuantAttention":
        _check_attrs(module, ("qkv", "proj", "num_heads", "head_dim", "scale", "q_norm", "k_norm", "attn_drop", "proj_drop"))
        if getattr(module, "gate", None) is not None:
            raise ConfigError("gated timm attention is not supported by the quantization adapter")
        module.__class__ = cls
        module.timm_fused_attn = module.fused_attn  # timm's choice, for timm_fp_attention
        module.fused_attn = False
        module.matmul_qk = matmul_qk
        module.matmul_av = matmul_av
        module.softmax_op = softmax
        module.scale_product = scale_product
        return module  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        if self.fused_attn:  # an FP copy (timm_fp_attention)
            _check_fp(self)
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = scaled_qk(self, q, k.transpose(-2, -1))
        if attn_mask is not None or is_causal:
            from timm.models.vision_transformer import maybe_add_mask, resolve_self_attn_mask

            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = self.attn_drop(attn.softmax(dim=-1) if self.softmax_op is None else self.softmax_op(attn))
        x = self.matmul_av(attn, v)
        x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        x = getattr(self, "norm", torch.nn.Identity())(x)
        return self.proj_drop(self.proj(x))


class QuantWindowAttention(WindowAttention):
    """timm Swin `WindowAttention` with quantizable matmuls (relative position bias and shift
    mask are added to the dequantized q @ k^T before the softmax, as in FP)."""

    matmul_qk: QuantMatMul
    matmul_av: QuantMatMul
    input_shift: Optional[torch.Tensor]

    @classmethod
    def adopt(cls, module: WindowAttention, matmul_qk: QuantMatMul, matmul_av: QuantMatMul,
              softmax: Optional[QuantSoftmax] = None, scale_product: bool = False) -> "QuantWindowAttention":
        _check_attrs(module, ("qkv", "proj", "num_heads", "scale", "softmax", "attn_drop", "proj_drop", "_get_rel_pos_bias"))
        module.__class__ = cls
        module.timm_fused_attn = module.fused_attn  # timm's choice, for timm_fp_attention
        module.fused_attn = False
        module.matmul_qk = matmul_qk
        module.matmul_av = matmul_av
        module.register_buffer("input_shift", None)
        module.scale_product = scale_product
        if softmax is not None:
            module.softmax = softmax  # called as self.softmax(attn), like timm's nn.Softmax(dim=-1)
        return module  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.fused_attn:  # an FP copy (timm_fp_attention)
            _check_fp(self)
            return super().forward(x, mask)
        B_, N, _ = x.shape
        if self.input_shift is not None:
            x = x + self.input_shift
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = scaled_qk(self, q, k.transpose(-2, -1))
        attn = attn + self._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = self.matmul_av(attn, v)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


def padded_window_attention(block: nn.Module, linear: nn.Module) -> Optional[nn.Module]:
    """The window attention inside `block` whose qkv is `linear` (a module with `input_shift`, timm's
    or mmdet's): its input windows are zero-padded after the norm, so a reparameterization of the
    norm -> `linear` pair must apply its shift there. None for any other Linear."""
    for m in block.modules():
        if hasattr(m, "input_shift") and getattr(m, "qkv", None) is linear:
            return m
    return None
