"""What timm's ViT/DeiT and Swin families share: the Mlp, the classifier head, the fully
quantized mode's block/LayerNorm/GELU patching."""

from __future__ import annotations

from timm.layers import Mlp
from torch import nn

from ptqbench.models.blocks import attach_norm_input
from ptqbench.models.families.base import QuantBuilder
from ptqbench.quant import roles
from ptqbench.quant.nonlinear import QuantAct


def mlp_and_head_roles(model: nn.Module) -> dict[str, str]:
    """fc1 (after a LayerNorm) and fc2 (after GELU) of every timm Mlp, and the classifier's input."""
    found: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, Mlp):
            found[f"{name}.fc1"] = roles.POST_LN
            found[f"{name}.fc2"] = roles.POST_GELU
    get_cls = getattr(model, "get_classifier", None)
    head = get_cls() if callable(get_cls) else None
    ids = {id(m): n for n, m in model.named_modules()}
    if isinstance(head, nn.Linear) and id(head) in ids:
        found[ids[id(head)]] = roles.HEAD_IN
    return found


def patch_full_blocks(model: nn.Module, build: QuantBuilder, block_type: type, quant_block: type) -> None:
    """Blocks get quantized residual adds, Mlps a quantized GELU input, every LayerNorm an input
    quantizer (the softmax is patched with the attention)."""
    for m in list(model.modules()):
        if isinstance(m, block_type):
            quant_block.adopt(m, build.act(roles.RESIDUAL), build.act(roles.RESIDUAL))
        elif isinstance(m, Mlp) and not isinstance(m.act, QuantAct):
            m.act = QuantAct(m.act, build.act(roles.GELU_IN))
    for m in list(model.modules()):
        if isinstance(m, nn.LayerNorm):
            attach_norm_input(m, build.act(roles.LN_IN))
