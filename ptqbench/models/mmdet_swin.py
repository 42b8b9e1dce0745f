"""What the one patching layer (adapter.py) needs to know about mmdet detectors with a Swin backbone.

mmdet's Swin (`mmdet.models.backbones.swin`) is the same network as timm's with other names:
`WindowMSA` (qkv, proj, relative position bias, fused-free `q @ k^T` and `attn @ v`),
`ShiftWindowMSA` (cyclic shift and window partition around a WindowMSA), `SwinBlock`
(norm1 -> attn, norm2 -> ffn), mmcv's `FFN` (`layers.0.0` = fc1 after LayerNorm, `layers.1` = fc2
after GELU) and `PatchMerging` (nn.Unfold, norm, reduction). This module gives the adapter the same
three things it reads from timm models: a quantizable attention (QuantWindowMSA), the role of each
Linear's input, and the LayerNorm -> Linear pairs for reparameterization.

`ShiftWindowMSA` zero-pads the norm1 output to a multiple of the window before `WindowMSA`, and
the padded tokens take part in attention; QuantWindowMSA's `input_shift` lets a reparameterization
apply its shift after that padding (ptqbench.algorithms.reparam, "Window padding").

Imported only when the model holds mmdet modules, so ptqbench without the det extra never imports
mmdet or mmcv.
"""

from __future__ import annotations

from typing import Optional

import torch
from mmcv.cnn.bricks import wrappers as mmcv_wrappers
from mmcv.cnn.bricks.transformer import FFN
from mmdet.models.backbones.swin import SwinBlock, WindowMSA
from mmdet.models.layers.transformer.utils import PatchMerging
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.quant import roles
from ptqbench.quant.modules import QuantMatMul

# mmcv's Conv2d / Linear only add an empty-tensor path for torch < 1.5; on newer torch their forward
# is nn.Conv2d's / nn.Linear's, so the adapter quantizes them like the plain modules.
PLAIN_LINEAR_TYPES: tuple[type, ...] = (mmcv_wrappers.Linear,)
PLAIN_CONV_TYPES: tuple[type, ...] = (mmcv_wrappers.Conv2d,)
PATCH_EMBED_CONV_SUFFIX = "patch_embed.projection"


class QuantWindowMSA(WindowMSA):
    """mmdet's `WindowMSA` with quantizable matmuls; parameters and state-dict names stay mmdet's.

    As in the timm adapter, q is scaled before its quantizer, and the relative position bias and
    the shift mask are added to the dequantized q @ k^T before the softmax. `input_shift` (None
    until a reparameterization sets it) is added to every token of the padded windows before qkv.
    """

    matmul_qk: QuantMatMul
    matmul_av: QuantMatMul
    input_shift: Optional[torch.Tensor]

    @classmethod
    def adopt(cls, module: WindowMSA, matmul_qk: QuantMatMul, matmul_av: QuantMatMul) -> "QuantWindowMSA":
        attrs = ("qkv", "proj", "num_heads", "scale", "softmax", "attn_drop", "proj_drop",
                 "relative_position_bias_table", "relative_position_index", "window_size")
        missing = [a for a in attrs if not hasattr(module, a)]
        if missing:
            raise ConfigError(
                f"mmdet WindowMSA lacks {missing}: this mmdet version's Swin differs from the one ptqbench "
                "patches (mmdet 3.3); install the pinned mmdet (constraints.txt, scripts/install_det.sh)"
            )
        module.__class__ = cls
        module.matmul_qk = matmul_qk
        module.matmul_av = matmul_av
        module.register_buffer("input_shift", None)
        return module  # type: ignore[return-value]

    def _rel_pos_bias(self) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        if self.input_shift is not None:
            x = x + self.input_shift
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = self.matmul_qk(q * self.scale, k.transpose(-2, -1)) + self._rel_pos_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(B // nw, nw, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = self.matmul_av(attn, v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def is_attention(m: nn.Module) -> bool:
    return isinstance(m, WindowMSA)


def linear_roles(name: str, m: nn.Module) -> dict[str, str]:
    """Input roles of the Linears inside `m` (named `name`), read from mmdet's module structure."""
    p = f"{name}." if name else ""
    if isinstance(m, WindowMSA):
        return {f"{p}qkv": roles.POST_LN, f"{p}proj": roles.ATTN_OUT}
    if isinstance(m, FFN):
        fc1, fc2 = m.layers[0][0], m.layers[1]
        if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
            return {f"{p}layers.0.0": roles.POST_LN, f"{p}layers.1": roles.POST_GELU}
    if isinstance(m, PatchMerging):
        return {f"{p}reduction": roles.POST_LN}
    return {}


def reparam_candidates(m: nn.Module) -> list[tuple[str, Optional[nn.Module]]]:
    """(LayerNorm attribute, the Linear it feeds) pairs inside `m`: both LayerNorms of a SwinBlock and
    the PatchMerging norm. The FPN output norms (`norm0..3`) feed convolutions and are left alone."""
    if isinstance(m, SwinBlock):
        return [("norm1", m.attn.w_msa.qkv), ("norm2", m.ffn.layers[0][0])]
    if isinstance(m, PatchMerging) and m.norm is not None:
        return [("norm", m.reduction)]
    return []
