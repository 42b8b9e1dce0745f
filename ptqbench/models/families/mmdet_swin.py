"""mmdet detectors with a Swin backbone (Mask R-CNN, Cascade Mask R-CNN; mmdet 3.x).

mmdet's Swin is timm's network under other names: `WindowMSA` (qkv, proj), `SwinBlock` (norm1 ->
attn.w_msa.qkv, norm2 -> ffn), mmcv's `FFN` (`layers.0.0` = fc1 after a LayerNorm, `layers.1` =
fc2 after GELU) and `PatchMerging` (norm -> reduction). The quantizable attention lives in
ptqbench.models.mmdet_swin. mmdet and mmcv are imported only when a model holds mmdet modules, so
ptqbench without the det extra never imports them.

No units: a detector's forward is no chain of blocks (the backbone passes (tokens, hw_shape) pairs into
four FPN levels; the RoI heads depend on proposals), so block-wise methods are refused for detectors
(ptqbench.tasks.detection).
"""

from __future__ import annotations

from torch import nn

from ptqbench.models.families.base import BaseFamily, QuantBuilder, pair_if_quantized, register_family
from ptqbench.models.structure import ReparamPair
from ptqbench.quant import roles


class MmdetSwin(BaseFamily):
    name = "mmdet_swin"
    description = "mmdet detector with a Swin backbone"
    # "patch_embed.proj" too: the timm suffix the adapter always matched
    patch_embed_suffixes = ("patch_embed.proj", "patch_embed.projection")

    def matches(self, model: nn.Module) -> bool:
        return any(type(m).__module__.startswith("mmdet.") for m in model.modules())

    def layer_types(self) -> tuple[tuple[type, ...], tuple[type, ...]]:
        # mmcv's Conv2d / Linear only add an empty-tensor path for torch < 1.5; on newer torch their
        # forward is nn.Conv2d's / nn.Linear's, so they are quantized like the plain modules.
        from mmcv.cnn.bricks import wrappers

        return (nn.Linear, wrappers.Linear), (nn.Conv2d, wrappers.Conv2d)

    def linear_roles(self, model: nn.Module) -> dict[str, str]:
        from mmcv.cnn.bricks.transformer import FFN
        from mmdet.models.backbones.swin import WindowMSA
        from mmdet.models.layers.transformer.utils import PatchMerging

        found: dict[str, str] = {}
        for name, m in model.named_modules():
            p = f"{name}." if name else ""
            if isinstance(m, WindowMSA):
                found.update({f"{p}qkv": roles.POST_LN, f"{p}proj": roles.ATTN_OUT})
            elif isinstance(m, FFN):
                fc1, fc2 = m.layers[0][0], m.layers[1]
                if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
                    found.update({f"{p}layers.0.0": roles.POST_LN, f"{p}layers.1": roles.POST_GELU})
            elif isinstance(m, PatchMerging):
                found[f"{p}reduction"] = roles.POST_LN
        return found

    def patch_attention(self, model: nn.Module, build: QuantBuilder) -> None:
        from mmdet.models.backbones.swin import WindowMSA

        from ptqbench.models.mmdet_swin import QuantWindowMSA

        for m in list(model.modules()):
            if isinstance(m, WindowMSA):
                QuantWindowMSA.adopt(m, *build.matmuls())

    def reparam_pairs(self, model: nn.Module) -> list[ReparamPair]:
        """Both LayerNorms of every SwinBlock and the PatchMerging norms. The FPN output norms
        (`norm0..3`) feed convolutions and are left alone."""
        from mmdet.models.backbones.swin import SwinBlock
        from mmdet.models.layers.transformer.utils import PatchMerging

        from ptqbench.models.attention import padded_window_attention

        pairs: list[ReparamPair] = []
        for name, m in model.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(m, SwinBlock):
                qkv = m.attn.w_msa.qkv
                pairs += pair_if_quantized(prefix, m, "norm1", qkv, padded_window_attention(m, qkv))
                pairs += pair_if_quantized(prefix, m, "norm2", m.ffn.layers[0][0])
            elif isinstance(m, PatchMerging) and m.norm is not None:
                pairs += pair_if_quantized(prefix, m, "norm", m.reduction)
        return pairs


register_family(MmdetSwin())
