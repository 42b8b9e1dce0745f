"""Transformer blocks with quantized residual adds and LayerNorm inputs (fully quantized mode).

Like `attention.py`, each class subclasses timm's block and only overrides `forward` (parameters
and state-dict names stay timm's). In integer hardware the residual stream is held quantized: the
block quantizes its input once with the following LayerNorm's input quantizer (role ln_in), and
both the LayerNorm and the skip path read that quantized tensor; the branch output added to it
(attention or MLP, role residual) is quantized too, so each add has two quantized operands. The
sum is quantized by the next LayerNorm's input quantizer (the next block's, or the final norm's).

LayerNorms outside a block (the final norm, Swin's PatchMerging norm) get their input quantizer
through a forward pre-hook (`attach_norm_input`).
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.quant.base import Quantizer


def _norm_input_hook(norm: nn.Module, args: tuple) -> Optional[tuple]:
    q = norm.input_quantizer
    if q is None or getattr(norm, "input_prequantized", False):
        return None
    return (q(args[0]), *args[1:])


def attach_norm_input(norm: nn.Module, quantizer: Optional[Quantizer]) -> None:
    """Give a LayerNorm an input quantizer (a child module, applied by a forward pre-hook)."""
    norm.input_quantizer = quantizer
    if quantizer is not None and not getattr(norm, "_ptq_input_hook", False):
        norm.register_forward_pre_hook(_norm_input_hook)
        norm._ptq_input_hook = True


def _quant_norm_input(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    q = getattr(norm, "input_quantizer", None)
    return q(x) if q is not None else x


def _quant(q: Optional[Quantizer], x: torch.Tensor) -> torch.Tensor:
    return q(x) if q is not None else x


def _adopt(module: nn.Module, cls: type, residual_attn: Optional[Quantizer], residual_mlp: Optional[Quantizer]) -> None:
    missing = [a for a in ("norm1", "norm2", "attn", "mlp", "drop_path1", "drop_path2") if not hasattr(module, a)]
    if missing:
        raise ConfigError(f"{type(module).__name__} lacks {missing}: this timm version's block differs from the one "
                          "ptqbench patches (tested with timm 1.0.x); install the pinned timm (constraints.txt)")
    module.__class__ = cls
    module.residual_attn = residual_attn
    module.residual_mlp = residual_mlp
    for norm in (module.norm1, module.norm2):
        norm.input_prequantized = True  # the block quantizes the stream once, for the norm and the skip


class QuantBlock(Block):
    """timm ViT/DeiT `Block` with quantized residual adds."""

    residual_attn: Optional[Quantizer]
    residual_mlp: Optional[Quantizer]

    @classmethod
    def adopt(cls, module: Block, residual_attn: Optional[Quantizer], residual_mlp: Optional[Quantizer]) -> "QuantBlock":
        _adopt(module, cls, residual_attn, residual_mlp)
        return module  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        x = _quant_norm_input(self.norm1, x)
        a = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        x = x + _quant(self.residual_attn, self.drop_path1(self.ls1(a)))
        x = _quant_norm_input(self.norm2, x)
        return x + _quant(self.residual_mlp, self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))


class QuantSwinBlock(SwinTransformerBlock):
    """timm `SwinTransformerBlock` with quantized residual adds."""

    residual_attn: Optional[Quantizer]
    residual_mlp: Optional[Quantizer]

    @classmethod
    def adopt(cls, module: SwinTransformerBlock, residual_attn: Optional[Quantizer],
              residual_mlp: Optional[Quantizer]) -> "QuantSwinBlock":
        _adopt(module, cls, residual_attn, residual_mlp)
        return module  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = _quant_norm_input(self.norm1, x)
        x = x + _quant(self.residual_attn, self.drop_path1(self._attn(self.norm1(x))))
        x = x.reshape(B, -1, C)
        x = _quant_norm_input(self.norm2, x)
        x = x + _quant(self.residual_mlp, self.drop_path2(self.mlp(self.norm2(x))))
        return x.reshape(B, H, W, C)
