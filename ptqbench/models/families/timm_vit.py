"""timm VisionTransformer (ViT, DeiT, and any architecture timm builds as one with pre-norm `Block`s)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from ptqbench.models.attention import QuantAttention
from ptqbench.models.blocks import QuantBlock
from ptqbench.models.families._timm import mlp_and_head_roles, patch_full_blocks
from ptqbench.models.families.base import BaseFamily, QuantBuilder, pair_if_quantized, register_family
from ptqbench.models.structure import BLOCK, EMBED, HEAD, ReparamPair, Unit
from ptqbench.quant import roles


class TimmViT(BaseFamily):
    name = "timm_vit"
    description = "timm VisionTransformer (ViT, DeiT) with pre-norm Blocks"
    full_roles = frozenset(roles.FULL_ROLES)
    patch_embed_suffixes = ("patch_embed.proj",)

    def matches(self, model: nn.Module) -> bool:
        # post-norm or parallel blocks put the LayerNorm elsewhere: the roles and pairs below would lie
        return isinstance(model, VisionTransformer) and all(isinstance(b, Block) for b in model.blocks)

    def linear_roles(self, model: nn.Module) -> dict[str, str]:
        found = mlp_and_head_roles(model)
        for name, m in model.named_modules():
            if isinstance(m, Attention):
                found[f"{name}.qkv"] = roles.POST_LN
                found[f"{name}.proj"] = roles.ATTN_OUT
        return found

    def patch_attention(self, model: nn.Module, build: QuantBuilder) -> None:
        for m in list(model.modules()):
            if isinstance(m, Attention):
                QuantAttention.adopt(m, *build.matmuls(), build.softmax(), build.scale_product)

    def patch_full(self, model: nn.Module, build: QuantBuilder) -> None:
        patch_full_blocks(model, build, Block, QuantBlock)

    def reparam_pairs(self, model: nn.Module) -> list[ReparamPair]:
        pairs: list[ReparamPair] = []
        for name, m in model.named_modules():
            if isinstance(m, Block):
                prefix = f"{name}." if name else ""
                pairs += pair_if_quantized(prefix, m, "norm1", getattr(m.attn, "qkv", None))
                pairs += pair_if_quantized(prefix, m, "norm2", getattr(m.mlp, "fc1", None))
        return pairs

    def units(self, model: nn.Module) -> list[Unit]:
        m = model

        def embed(x: torch.Tensor) -> torch.Tensor:
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

        def head(x: torch.Tensor) -> torch.Tensor:
            return m.forward_head(m.norm(x))

        units = [Unit("patch_embed", embed, nn.ModuleList([m.patch_embed, m.norm_pre]), EMBED, m.patch_embed)]
        units += [Unit(f"blocks.{i}", blk, blk, BLOCK) for i, blk in enumerate(m.blocks)]
        tail = [mod for mod in (m.norm, getattr(m, "fc_norm", None), m.head) if isinstance(mod, nn.Module)]
        units.append(Unit("head", head, nn.ModuleList(tail), HEAD))
        return units


register_family(TimmViT())
