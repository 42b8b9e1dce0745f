"""PTQ4ViT (Yuan et al., ECCV 2022): twin uniform quantization + Hessian-guided scale search.

Recipe (ptqbench/quant/twin_uniform.py, ptqbench/algorithms/hessian_search.py):
1. Post-softmax: twin uniform (R1 = [0, split) with the step split/(L-1), R2 = [split, 1] with
   1/(L-1), split = 2^-m); post-GELU: twin uniform (one step for the negative values, one for the
   positive ones). Every other tensor: uniform, per output channel for weights, per tensor for
   activations; symmetric signed codes by default, as the released PTQ4ViT code quantizes
   (`symmetric`).
2. One calibration pass initialises every quantizer (min-max ranges; twin: MSE).
3. The Hessian-guided search, layer by layer in forward order with the upstream layers already
   quantized: `search_rounds` alternating rounds over each layer's input and weight (or the two
   matmul operands), `search_candidates` scales each, metric `search_metric`.

Where the defaults differ from the released PTQ4ViT code, each a key that gives the release's
(docs/anchors/ptq4vit/README.md lists the released line of each): weights one scale per output
channel (`weight_granularity`), q/k/v one per tensor (`operand_granularity`), input before weight
(`search_order`), a candidate kept only if it improves (`accept`), cross-entropy gradients
(`grad_loss`; the release's KL at its minimum gives rounding residuals), the split scored with v
quantized (`split_fp_operand`), the twin softmax selecting one region (`twin_sum_regions`), the
post-GELU negative step from the data (`gelu_neg_step`), the calibrated start (`search_init`);
and 20 candidates in [0.01, 1.2] instead of 100, so the search finishes in minutes on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ptqbench.algorithms.hessian_search import SearchConfig
from ptqbench.methods.base import Method, ProtocolConfig, Step, register_method
from ptqbench.methods.steps import Calibrate, HessianSearch, optional
from ptqbench.quant import roles
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.spec import QuantizerSpec, QuantPlan


@dataclass(frozen=True)
class PTQ4ViTConfig(ProtocolConfig, SearchConfig):
    """Attributes (besides the search knobs of `SearchConfig`: search_metric, search_candidates,
    search_rounds, alpha_min, alpha_max, chunk_size):
    twin: twin uniform for post-softmax and post-GELU (False: uniform).
    symmetric: signed symmetric uniform codes for weights and activations (PTQ4ViT's).
    twin_m_max: largest split exponent of the twin post-softmax initialisation (PTQ4ViT: 19).
    twin_sum_regions: the released twin softmax arithmetic, the two regions' values added
        (quant/twin_uniform.py; False: each value takes its own region's, as the paper describes).
    gelu_neg_step: > 0: post-GELU negative step fixed at this / 2^(b-1) with 2^(b-1) negative
        codes (released: 0.16997124254703522); 0: |min| / (2^(b-1) - 1) from the data.
    """

    weight_search: str = "minmax"
    act_search: str = "minmax"
    twin: bool = True
    symmetric: bool = True
    twin_m_max: int = 19
    twin_sum_regions: bool = False
    gelu_neg_step: float = 0.0

    def __post_init__(self) -> None:
        ProtocolConfig.__post_init__(self)
        SearchConfig.__post_init__(self)


@register_method("ptq4vit", display="PTQ4ViT", cite="yuan2022ptq4vit", paper="PTQ4ViT")
class PTQ4ViT(Method):
    """PTQ4ViT; see the module docstring."""

    Config = PTQ4ViTConfig

    logits_fix = "set method.grad_loss=ce (the detector's loss), or run it with task=classification"

    @property
    def needs_logits(self) -> bool:  # type: ignore[override]
        """grad_loss=kl compares the classifier's FP softmax outputs."""
        c = self.config
        return c.grad_loss == "kl" and c.search_metric == "hessian" and c.search_rounds > 0

    @property
    def blockwise(self) -> bool:  # type: ignore[override]
        """The Hessian-guided search walks the model's units; search_rounds=0 is one calibration pass."""
        return self.config.search_rounds > 0

    def weight_spec(self) -> QuantizerSpec:
        c = self.config
        return QuantizerSpec(self.bits.w, symmetric=c.symmetric, per_channel=True,
                             search=RangeSearch(c.weight_search, c.weight_percentiles))

    def protocol_plan(self) -> QuantPlan:
        base = self.common_plan()
        acts = {r: (None if s is None else QuantizerSpec(s.bits, symmetric=self.config.symmetric, search=s.search))
                for r, s in base.activations.items()}
        if self.config.twin:
            c = self.config
            acts[roles.POST_SOFTMAX] = self.act_spec(kind="twin_softmax", options=(
                ("m_max", c.twin_m_max), ("sum_regions", c.twin_sum_regions)))
            acts[roles.POST_GELU] = self.act_spec(kind="twin_gelu", options=(("gelu_neg_step", c.gelu_neg_step),))
        return QuantPlan(base.weight, acts)

    def steps(self) -> Sequence[Step]:
        return (Calibrate(), *optional(self.config.search_rounds > 0, HessianSearch(self.config)))
