"""timm SwinTransformer (v1): window attention, shifted windows, PatchMerging between stages."""

from __future__ import annotations

import torch
from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock, WindowAttention
from torch import nn

from ptqbench.models.attention import QuantWindowAttention, padded_window_attention
from ptqbench.models.blocks import QuantSwinBlock
from ptqbench.models.families._timm import mlp_and_head_roles, patch_full_blocks
from ptqbench.models.families.base import BaseFamily, QuantBuilder, pair_if_quantized, register_family
from ptqbench.models.structure import BLOCK, DOWNSAMPLE, EMBED, HEAD, ReparamPair, Unit
from ptqbench.quant import roles


class TimmSwin(BaseFamily):
    name = "timm_swin"
    description = "timm SwinTransformer (Swin v1)"
    full_roles = frozenset(roles.FULL_ROLES)
    patch_embed_suffixes = ("patch_embed.proj",)

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def linear_roles(self, model: nn.Module) -> dict[str, str]:
        found = mlp_and_head_roles(model)
        for name, m in model.named_modules():
            if isinstance(m, WindowAttention):
                found[f"{name}.qkv"] = roles.POST_LN
                found[f"{name}.proj"] = roles.ATTN_OUT
            elif isinstance(m, PatchMerging):
                found[f"{name}.reduction"] = roles.POST_LN
        return found

    def patch_attention(self, model: nn.Module, build: QuantBuilder) -> None:
        for m in list(model.modules()):
            if isinstance(m, WindowAttention):
                QuantWindowAttention.adopt(m, *build.matmuls(), build.softmax(), build.scale_product)

    def patch_full(self, model: nn.Module, build: QuantBuilder) -> None:
        patch_full_blocks(model, build, SwinTransformerBlock, QuantSwinBlock)

    def reparam_pairs(self, model: nn.Module) -> list[ReparamPair]:
        pairs: list[ReparamPair] = []
        for name, m in model.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(m, SwinTransformerBlock):
                qkv = getattr(m.attn, "qkv", None)
                pairs += pair_if_quantized(prefix, m, "norm1", qkv, padded_window_attention(m, qkv))
                pairs += pair_if_quantized(prefix, m, "norm2", getattr(m.mlp, "fc1", None))
            elif isinstance(m, PatchMerging):
                pairs += pair_if_quantized(prefix, m, "norm", m.reduction)
        return pairs

    def units(self, model: nn.Module) -> list[Unit]:
        m = model

        def head(x: torch.Tensor) -> torch.Tensor:
            return m.forward_head(m.norm(x))

        units = [Unit("patch_embed", m.patch_embed, m.patch_embed, EMBED)]
        for i, stage in enumerate(m.layers):
            if not isinstance(stage.downsample, nn.Identity):
                units.append(Unit(f"layers.{i}.downsample", stage.downsample, stage.downsample, DOWNSAMPLE))
            units += [Unit(f"layers.{i}.blocks.{j}", blk, blk, BLOCK) for j, blk in enumerate(stage.blocks)]
        units.append(Unit("head", head, nn.ModuleList([m.norm, m.head]), HEAD))
        return units


register_family(TimmSwin())
