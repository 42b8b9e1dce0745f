"""The quantizable attention of mmdet's Swin (`mmdet.models.backbones.swin.WindowMSA`: qkv, proj,
relative position bias, fused-free `q @ k^T` and `attn @ v`); the rest of what ptqbench knows about
mmdet Swin detectors is their model family (ptqbench.models.families.mmdet_swin).

`ShiftWindowMSA` zero-pads the norm1 output to a multiple of the window before `WindowMSA`, and
the padded tokens take part in attention; QuantWindowMSA's `input_shift` lets a reparameterization
apply its shift after that padding (ptqbench.algorithms.reparam, "Window padding").

Imported only by that family, when the model holds mmdet modules.
"""

from __future__ import annotations

from typing import Optional

import torch
from mmdet.models.backbones.swin import WindowMSA

from ptqbench.errors import ConfigError
from ptqbench.models.attention import scaled_qk
from ptqbench.quant.modules import QuantMatMul


class QuantWindowMSA(WindowMSA):
    """mmdet's `WindowMSA` with quantizable matmuls; parameters and state-dict names stay mmdet's.

    As in the timm adapter, q is scaled before its quantizer (or the product: `scale_product`), and the relative position bias and
    the shift mask are added to the dequantized q @ k^T before the softmax. `input_shift` (None
    until a reparameterization sets it) is added to every token of the padded windows before qkv.
    """

    matmul_qk: QuantMatMul
    matmul_av: QuantMatMul
    input_shift: Optional[torch.Tensor]

    @classmethod
    def adopt(cls, module: WindowMSA, matmul_qk: QuantMatMul, matmul_av: QuantMatMul,
              scale_product: bool = False) -> "QuantWindowMSA":
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
        module.scale_product = scale_product
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
        attn = scaled_qk(self, q, k.transpose(-2, -1)) + self._rel_pos_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(B // nw, nw, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = self.matmul_av(attn, v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))
