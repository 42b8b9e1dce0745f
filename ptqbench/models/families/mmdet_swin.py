"""mmdet detectors with a Swin backbone (Mask R-CNN, Cascade Mask R-CNN; mmdet 3.x).

mmdet's Swin is timm's network under other names: `WindowMSA` (qkv, proj), `SwinBlock` (norm1 ->
attn.w_msa.qkv, norm2 -> ffn), mmcv's `FFN` (`layers.0.0` = fc1 after a LayerNorm, `layers.1` =
fc2 after GELU) and `PatchMerging` (norm -> reduction). The quantizable attention lives in
ptqbench.models.mmdet_swin. mmdet and mmcv are imported only when a model holds mmdet modules, so
ptqbench without the det extra never imports them.

Units (what block-wise methods walk): the Swin backbone's chain only, patch embedding (EMBED), every
`SwinBlock` (BLOCK) and every `PatchMerging` (DOWNSAMPLE), in forward order. The rest of a detector is
no chain (each stage's output also feeds an FPN level; the RoI heads depend on the proposals), so the
neck and the heads keep what the method's calibration pass gave them. mmdet's backbone passes
(tokens [B, h*w, C], hw_shape) pairs; between units the tokens travel as one [B, h, w, C] tensor, so
the shape carries hw_shape, and a chunk or any subset of the images is again a valid unit input.
The first unit takes the detector's preprocessed image tensor [B, 3, H, W] (`unit_input`: mmdet's
data preprocessor normalises and pads the calibration batch to one size, the batch maximum rounded
up to 32), so every calibration image has the same hw_shape in every unit.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.models.families.base import BaseFamily, QuantBuilder, pair_if_quantized, register_family
from ptqbench.models.structure import BLOCK, DOWNSAMPLE, EMBED, ReparamPair, Unit
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
                QuantWindowMSA.adopt(m, *build.matmuls(), scale_product=build.scale_product)

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


    def units(self, model: nn.Module) -> list[Unit]:
        """The backbone chain as units (module docstring); [] when the model holds no Swin backbone."""
        from mmdet.models.backbones.swin import SwinTransformer

        found = [(n, m) for n, m in model.named_modules() if isinstance(m, SwinTransformer)]
        if not found:
            return []
        name, bb = found[0]
        p = f"{name}." if name else ""
        units = [Unit(f"{p}patch_embed", _EmbedStep(bb), bb.patch_embed, EMBED)]
        for i, stage in enumerate(bb.stages):
            for j, blk in enumerate(stage.blocks):
                units.append(Unit(f"{p}stages.{i}.blocks.{j}", _TokenStep(blk), blk, BLOCK))
            if stage.downsample is not None:
                units.append(Unit(f"{p}stages.{i}.downsample", _TokenStep(stage.downsample), stage.downsample,
                                  DOWNSAMPLE))
        return units

    def unit_input(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """The first unit's input: the calibration batch (an mmdet batch dict) through the
        detector's data preprocessor (normalised, padded to one size, on the model's device)."""
        if isinstance(inputs, torch.Tensor):
            return inputs
        return _detector(model).data_preprocessor(inputs, False)["inputs"]

    def output_loss(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """PTQ4ViT's task loss on a detector: the RPN objectness of every anchor of every FPN level
        against the FP detector's own decision (logit > 0), binary cross-entropy, summed. It is
        what cross-entropy against the classifier's own top-1 is for a classifier: a Fisher proxy
        of the Hessian, reached from every backbone layer through every FPN level, without labels
        or proposals (the RoI heads sit behind the non-differentiable proposal selection)."""
        det = _detector(model)
        loss_cls = getattr(det.rpn_head, "loss_cls", None)
        if not getattr(loss_cls, "use_sigmoid", False):
            raise ConfigError(f"{type(det).__name__}: the Hessian-guided search needs an RPN with sigmoid objectness "
                              "(mmdet's RPNHead); use method.search_metric=mse or cosine for this detector")

        def loss(x: torch.Tensor) -> torch.Tensor:
            cls_scores, _ = det.rpn_head(det.extract_feat(x))
            return sum(F.binary_cross_entropy_with_logits(c, (c.detach() > 0).to(c.dtype), reduction="sum")
                       for c in cls_scores)

        return loss


class _EmbedStep:
    """Images [B, 3, H, W] -> patch tokens [B, h, w, C] (mmdet's SwinTransformer.forward up to the stages)."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        tokens, (h, w) = bb.patch_embed(x)
        if bb.use_abs_pos_embed:
            tokens = tokens + bb.absolute_pos_embed
        return bb.drop_after_pos(tokens).reshape(tokens.shape[0], h, w, -1)


class _TokenStep:
    """A SwinBlock or PatchMerging on [B, h, w, C] tokens: hw_shape is read from the shape."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        out = self.module(x.reshape(b, h * w, c), (h, w))
        if isinstance(out, tuple):  # PatchMerging: (tokens, new hw_shape)
            out, (h, w) = out
        return out.reshape(b, h, w, -1)


def _detector(model: nn.Module) -> nn.Module:
    """The mmdet detector inside `model` (the model itself or a wrapper such as DetectorForward)."""
    from mmdet.models.detectors.base import BaseDetector

    for m in model.modules():
        if isinstance(m, BaseDetector):
            return m
    raise ConfigError(f"{type(model).__name__} holds no mmdet detector (BaseDetector)")


register_family(MmdetSwin())
