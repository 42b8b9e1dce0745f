"""PTQ4ViT (Yuan et al., ECCV 2022): twin uniform quantization + Hessian-guided scale search.

Recipe (ptqbench/quant/twin_uniform.py, ptqbench/algorithms/hessian_search.py):
1. Post-softmax: twin uniform (R1 = [0, split) with the step split/(L-1), R2 = [split, 1] with
   1/(L-1), split = 2^-m); post-GELU: twin uniform (one step for the negative values, one for the
   positive ones). Every other tensor: uniform, symmetric signed codes, as the released PTQ4ViT
   code quantizes (`symmetric`).
2. One calibration pass initialises every quantizer (min-max ranges; twin: MSE).
3. The Hessian-guided search, layer by layer in forward order, each layer on its FP inputs
   (`search_inputs`): `search_rounds` alternating rounds over each layer's input and weight (or
   the two matmul operands), `search_candidates` scales each, metric `search_metric`.

The defaults are the released PTQ4ViT code's recipe (docs/anchors/ptq4vit/README.md lists the
released line of each; measured side by side with the release on the same 32 images: W4A4 -0.62,
W6A6 -0.15, W8A8 -0.08 top-1): per-tensor weights (`weight_granularity`), q/k/v one alpha per
head (`operand_granularity`), weight before input (`search_order`), the best candidate always
installed (`accept`), the KL-residual gradients on a classifier (`grad_loss`), the split scored
with v FP (`split_fp_operand`), the twin softmax's two regions added (`twin_sum_regions`), the
fixed post-GELU negative step (`gelu_neg_step`), the released initial steps (`search_init`), 100
candidates on the released grid (`alpha_grid`), gradients in chunks of 4 (`chunk_size`) and the
patch-embedding input FP (`patch_input_bits`). ptqbench's earlier reading of the paper (per-channel
weights, task-loss gradients, 20 candidates; W4A4 +16 top-1 above the release) is these keys set
the other way (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ptqbench.algorithms.hessian_search import SearchConfig
from ptqbench.methods.base import Method, ProtocolConfig, Step, register_method
from ptqbench.methods.steps import Calibrate, HessianSearch, optional
from ptqbench.quant import roles
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.spec import QuantizerSpec, QuantPlan


# ptqbench's earlier reading of the paper (the common protocol's per-channel weights, the task
# loss's gradients, a bounded grid): W4A4 59.38 / W6A6 80.69 with one round on DeiT-T, where the
# release gives 45.77 / 79.85 (docs/results.md). As overrides: method.KEY=VALUE for each.
READING_KEYS: dict[str, object] = {
    "search_candidates": 20, "alpha_grid": "linspace", "chunk_size": 8, "weight_granularity": "channel",
    "operand_granularity": "tensor", "search_order": "input_first", "accept": "improve", "grad_loss": "ce",
    "split_fp_operand": False, "search_init": "calibrated", "twin_sum_regions": False, "gelu_neg_step": 0.0,
    "patch_input_bits": 8}


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
        codes (the released 0.16997124254703522); 0: |min| / (2^(b-1) - 1) from the data.
    patch_input_bits: the released code leaves the patch embedding's input FP (null).
    """

    weight_search: str = "minmax"
    act_search: str = "minmax"
    twin: bool = True
    symmetric: bool = True
    twin_m_max: int = 19
    twin_sum_regions: bool = True
    gelu_neg_step: float = 0.16997124254703522
    patch_input_bits: Optional[int] = None

    def __post_init__(self) -> None:
        ProtocolConfig.__post_init__(self)
        SearchConfig.__post_init__(self)


def twin_uniform_specs(bits: int, c: PTQ4ViTConfig | type[PTQ4ViTConfig]) -> dict[str, QuantizerSpec]:
    """PTQ4ViT's twin uniform quantizers for post-softmax and post-GELU, ranges from `c`'s
    act_search; TSPTQ-ViT passes the class for its `v2sf_off=twin` comparison at PTQ4ViT's defaults."""
    search = RangeSearch(c.act_search, c.act_percentiles)
    return {roles.POST_SOFTMAX: QuantizerSpec(bits, kind="twin_softmax", search=search, options=(
                ("m_max", c.twin_m_max), ("sum_regions", c.twin_sum_regions))),
            roles.POST_GELU: QuantizerSpec(bits, kind="twin_gelu", search=search,
                                           options=(("gelu_neg_step", c.gelu_neg_step),))}


@register_method("ptq4vit", display="PTQ4ViT", cite="yuan2022ptq4vit", paper="PTQ4ViT")
class PTQ4ViT(Method):
    """PTQ4ViT; see the module docstring."""

    Config = PTQ4ViTConfig

    logits_fix = "set method.grad_loss=auto or ce (the detector's loss), or run it with task=classification"

    @property
    def needs_logits(self) -> bool:  # type: ignore[override]
        """grad_loss=kl compares the classifier's FP softmax outputs (auto: a detector's loss instead)."""
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
            acts.update(twin_uniform_specs(self.bits.a, self.config))
        return QuantPlan(base.weight, acts)

    def steps(self) -> Sequence[Step]:
        return (Calibrate(), *optional(self.config.search_rounds > 0, HessianSearch(self.config)))
