"""I&S-ViT (Zhong et al., arXiv 2311.10126), as its released code runs it (zysxmu/IaS-ViT
`test_quant.py`); step by step, with the released file and function each follows, in
docs/methods/ias.md.

1. Quantizers: RepQ-ViT's activation side (per-channel post-LayerNorm inputs, per-tensor uniform
   elsewhere, activation clipping grid {0.999, 0.9999, 0.99999}), SULQ for post-softmax
   (ptqbench.quant.sulq), per-channel weights with the 9-entry clipping grid 0.97 ... 0.99999,
   the image input of the patch embedding in FP.
2. Stage one, "Q-Act, FP-W": the activation quantizers fit on the first `act_calib_images`
   calibration images with FP weights; then every unit (patch embedding, blocks, Swin
   PatchMerging, head) trains its Linear/Conv weights and biases in FP with Adam, its inputs the
   FP model's, its targets the FP model's outputs. Quantizer parameters stay frozen.
3. Stage two: RepQ-ViT's reparameterization with the mean scale and a fractional mean zero point
   (`round_zero_point: false`, as released).
4. Stage three, "Q-Act, Q-W": the weight quantizers fit the trained, folded weights; every unit
   trains its weights and biases again, now through the weight quantizers' straight-through
   rounding (scales frozen), its inputs the quantized model's, its targets the original FP model's.

Loss: squared error summed over dim 1 (tokens; classes at the head) and averaged over the rest,
Adam at 4e-5 with a cosine schedule to 0 per unit, batch 64, 1000 iterations per unit per stage
at W3A3/W4A4 and 200 at W6A6 (the README's commands); 1024 calibration images in the paper
(`calib.size=1024`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.configs import SmoothOptimizationConfig, reparam_activations
from ptqbench.quant import roles
from ptqbench.quant.spec import QuantizerSpec, QuantPlan
from ptqbench.quant.sulq import DEFAULT_BIASES

IAS_WEIGHT_PERCENTILES = (0.97, 0.98, 0.99, 0.995, 0.9995, 0.9997, 0.9999, 0.99995, 0.99999)


@dataclass(frozen=True)
class IaSConfig(SmoothOptimizationConfig):
    """Attributes (besides the three stages' keys of SmoothOptimizationConfig and RepQ-ViT's
    activation side; the defaults are the released code's):
    sulq: SULQ for post-softmax (False: RepQ-ViT's log-sqrt2, `log_sqrt2`).
    sulq_biases: SULQ's candidate shifts.
    sulq_released_asymmetry: SULQ's forward grid as released (2^b + 1 codes; docs).
    attention_scale / reparam_arithmetic: "product" / "float32", the released arithmetic.
    """

    patch_input_bits: Optional[int] = None
    weight_percentiles: tuple[float, ...] = IAS_WEIGHT_PERCENTILES
    round_zero_point: bool = False
    sulq: bool = True
    sulq_biases: tuple[float, ...] = DEFAULT_BIASES
    sulq_released_asymmetry: bool = True
    attention_scale: str = "product"
    reparam_arithmetic: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "sulq_biases", tuple(float(b) for b in self.sulq_biases))


@register_method("ias", display="I&S-ViT", cite="zhong2023isvit", paper="I&S-ViT")
class IaSViT(Method):
    """I&S-ViT; see the module docstring for the recipe and docs/methods/ias.md for its sources."""

    Config = IaSConfig
    blockwise = True
    # the weight training has not been checked on the fully quantized roles: refuse quant.full
    supports_full = False

    def protocol_plan(self) -> QuantPlan:
        c = self.config
        acts = reparam_activations(self, c)
        if c.sulq:
            acts[roles.POST_SOFTMAX] = QuantizerSpec(
                self.bits.a, kind="sulq",
                options=(("biases", c.sulq_biases), ("released_asymmetry", c.sulq_released_asymmetry)))
        return c.plan(self.weight_spec(), acts)

    def steps(self) -> Sequence[Step]:
        return self.config.smooth_steps(self.bits)
