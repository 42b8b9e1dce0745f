"""A model as a sequence of units (embedding, blocks, head), so calibration data can be streamed
through it one unit at a time.

Block-wise methods (ERQ, GPTQ, block reconstruction) need each block's input for the whole
calibration set. Running `units` in order reproduces `model(x)` exactly; a method keeps only the
current unit's input and output in memory instead of every layer's activations.
"""

from __future__ import annotations


import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.models.structure import Unit


def _vit_units(m: VisionTransformer) -> list[Unit]:
    def embed(x: torch.Tensor) -> torch.Tensor:
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def head(x: torch.Tensor) -> torch.Tensor:
        return m.forward_head(m.norm(x))

    units = [Unit("patch_embed", embed, nn.ModuleList([m.patch_embed, m.norm_pre]))]
    units += [Unit(f"blocks.{i}", blk, blk) for i, blk in enumerate(m.blocks)]
    tail = [mod for mod in (m.norm, getattr(m, "fc_norm", None), m.head) if isinstance(mod, nn.Module)]
    units.append(Unit("head", head, nn.ModuleList(tail)))
    return units


def _swin_units(m: SwinTransformer) -> list[Unit]:
    def head(x: torch.Tensor) -> torch.Tensor:
        return m.forward_head(m.norm(x))

    units = [Unit("patch_embed", m.patch_embed, m.patch_embed)]
    for i, stage in enumerate(m.layers):
        if not isinstance(stage.downsample, nn.Identity):
            units.append(Unit(f"layers.{i}.downsample", stage.downsample, stage.downsample))
        units += [Unit(f"layers.{i}.blocks.{j}", blk, blk) for j, blk in enumerate(stage.blocks)]
    units.append(Unit("head", head, nn.ModuleList([m.norm, m.head])))
    return units


def model_units(model: nn.Module) -> list[Unit]:
    """The units of a timm ViT/DeiT or Swin model, in forward order."""
    if isinstance(model, VisionTransformer):
        return _vit_units(model)
    if isinstance(model, SwinTransformer):
        return _swin_units(model)
    raise ConfigError(
        f"block-wise methods cannot split {type(model).__name__} into blocks; supported: timm "
        "VisionTransformer (ViT, DeiT) and SwinTransformer"
    )
