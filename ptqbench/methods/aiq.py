"""AIQViT (Jiang et al., AAAI 2025, arXiv 2502.04628): architecture-informed low-rank compensation,
a dynamic focusing quantizer (DFQ) for post-softmax, and a curriculum over calibration samples,
all trained on the block-reconstruction engine.

No code is public and the sources at hand (abstract, third-party summaries) do not give the
formulas, so this is ptqbench's reading, not a reproduction (sources and reasoning in
docs/methods/aiq.md):

1. RepQ-ViT's activation side (per-channel post-LN, reparameterized to per-tensor), calibrated in
   one pass; post-softmax gets DFQ (`dfq`; `dfq: false` = RepQ-ViT's log-sqrt2): 0 plus 2^b - 1
   levels on [b1, b2] with values outside mapped to the bounds (`dfq_below: clamp`, the paper's
   description; `zero` keeps code 0 as exact zero), the interval initialized by the error of the
   attention output A @ V over a grid of candidates (`dfq_init: output`; `mse`: the MSE on A); see
   ptqbench/quant/dynamic_focus.py.
2. Block reconstruction, unit by unit: the weights stay at their calibrated quantized values;
   what learns is a low-rank branch B A on every Linear (`lowrank`) and the DFQ bounds, as in the
   paper; `learn_act_scale: true` also trains the LSQ activation step sizes.
3. Rank per Linear (`rank_search`): "darts" relaxes the choice over `ranks` with softmax
   architecture logits, trained for the first `search_frac` of the iterations with a cost
   `rank_cost` on the expected extra parameters, then keeps the most probable rank; "fixed" uses
   `rank` everywhere.
4. Curriculum (`curriculum`): samples sorted easy -> hard by their initial block loss; batches are
   drawn from a pool that grows from `curriculum_start` of the set to all of it by
   `curriculum_end` of the iterations.
5. At inference the branch stays an FP side branch on the layer's quantized input
   (`lowrank_merge: false`, the paper's intent: the compensation survives), computed on two paths
   as in training (`lowrank_eval: branch`) or as one matmul with Q(W) + B A (`folded`: faster, the
   same function rounded differently); `true` adds B A to the weight and re-quantizes it (no extra
   parameters, most of the compensation lost). The record
   states the extra parameter count (`lowrank_extra_params`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ptqbench.errors import ConfigError
from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.configs import BlockReconConfig, reparam_activations
from ptqbench.methods.steps import RECALIBRATE, Calibrate, Reconstruct, optional
from ptqbench.models.adapter import QuantizedModel
from ptqbench.quant import roles
from ptqbench.quant.dynamic_focus import (BELOW_MODES, DEFAULT_LOWER_PERCENTILES, DEFAULT_MAX_FRACTIONS,
                                          DEFAULT_UPPER_PERCENTILES, INIT_METRICS)
from ptqbench.quant.lowrank import LowRankBranch
from ptqbench.quant.modules import QuantLinear
from ptqbench.quant.spec import QuantizerSpec, QuantPlan

RANK_SEARCHES = ("darts", "fixed")
LOWRANK_EVALS = ("folded", "branch")


@dataclass(frozen=True)
class AIQConfig(BlockReconConfig):
    """Attributes (besides the reconstruction and RepQ-ViT knobs):
    dfq: dynamic focusing quantizer on post-softmax (False: log-sqrt2).
    dfq_percentiles: candidate initial upper bounds b2 (percentiles of the calibration data).
    dfq_max_fractions: further candidate b2, fractions of the data's maximum.
    dfq_lower_percentiles: candidate initial lower bounds b1 besides 0 (dfq_below="zero" only).
    dfq_below: "clamp" (2^b levels on [b1, b2], values outside mapped to the bounds: the paper's
        description) or "zero" (code 0 is exact zero, the other levels uniform on [b1, b2]).
    dfq_init: pick the initial interval by the error of the attention output A @ V ("output")
        or by the MSE on A ("mse").
    lr_dfq: Adam learning rate of b1, b2.
    learn_act_scale: also train the LSQ step sizes of the uniform activation quantizers (the paper
        trains only the low-rank weights and the DFQ bounds: off).
    lowrank: train a low-rank compensation branch on every Linear.
    rank_search: "darts" (relaxed search over `ranks`) or "fixed" (`rank` everywhere).
    ranks / rank: candidate ranks / the fixed rank.
    rank_cost: weight of the expected-extra-parameter cost during the search.
    search_frac: fraction of the iterations spent searching.
    lr_lowrank / lr_arch: Adam learning rates of B, A and of the architecture logits.
    lowrank_merge: fold B A into the weight and re-quantize at the end (False: FP side branch).
    lowrank_eval: how an FP side branch is computed at evaluation: "branch" (xq Q(W)^T +
        (xq A^T) B^T, as in training: bit-identical to every earlier result) or "folded" (one
        matmul with Q(W) + B A, cached: the same function rounded differently, 1.2x the FP
        model's time instead of 1.8x; at W4A4 the rounding moves activations across code
        boundaries, so about 5 % of the images change outcome: docs/methods/aiq.md).
    curriculum / curriculum_start / curriculum_end: easy-to-hard sample schedule.
    """

    weight_learning: str = "none"
    learn_act_scale: bool = False
    dfq: bool = True
    dfq_percentiles: tuple[float, ...] = DEFAULT_UPPER_PERCENTILES
    dfq_max_fractions: tuple[float, ...] = DEFAULT_MAX_FRACTIONS
    dfq_lower_percentiles: tuple[float, ...] = DEFAULT_LOWER_PERCENTILES
    dfq_below: str = "clamp"
    dfq_init: str = "output"
    lr_dfq: float = 1e-4
    lowrank: bool = True
    rank_search: str = "darts"
    ranks: tuple[int, ...] = (0, 4, 8, 16, 32, 64, 100)
    rank: int = 8
    rank_cost: float = 1e-3
    search_frac: float = 0.3
    lr_lowrank: float = 1e-3
    lr_arch: float = 1e-2
    lowrank_merge: bool = False
    lowrank_eval: str = "branch"
    curriculum: bool = True
    curriculum_start: float = 0.25
    curriculum_end: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))
        for key in ("dfq_percentiles", "dfq_max_fractions", "dfq_lower_percentiles"):
            object.__setattr__(self, key, tuple(float(p) for p in getattr(self, key)))
        if self.dfq_below not in BELOW_MODES:
            raise ConfigError(f"method.dfq_below={self.dfq_below!r}; choose one of {BELOW_MODES}")
        if self.dfq_init not in INIT_METRICS:
            raise ConfigError(f"method.dfq_init={self.dfq_init!r}; choose one of {INIT_METRICS}")
        if not self.dfq_percentiles or any(not 0.5 < p <= 1.0 for p in self.dfq_percentiles):
            raise ConfigError(f"method.dfq_percentiles={list(self.dfq_percentiles)}: give at least one, each in (0.5, 1]")
        if any(not 0.0 < p < 1.0 for p in self.dfq_lower_percentiles):
            raise ConfigError(f"method.dfq_lower_percentiles={list(self.dfq_lower_percentiles)}: each must lie in (0, 1)")
        if any(not 0.0 < f <= 1.0 for f in self.dfq_max_fractions):
            raise ConfigError(f"method.dfq_max_fractions={list(self.dfq_max_fractions)}: each must lie in (0, 1]")
        if self.lr_dfq < 0:
            raise ConfigError(f"method.lr_dfq={self.lr_dfq}: must be >= 0")
        if self.lowrank_eval not in LOWRANK_EVALS:
            raise ConfigError(f"method.lowrank_eval={self.lowrank_eval!r}; choose one of {LOWRANK_EVALS}")
        if self.rank_search not in RANK_SEARCHES:
            raise ValueError(f"rank_search={self.rank_search!r}; choose one of {RANK_SEARCHES}")
        if self.rank < 0 or not self.ranks or min(self.ranks) < 0:
            raise ValueError(f"ranks must be >= 0, got rank={self.rank}, ranks={list(self.ranks)}")


@register_method("aiq", display="AIQViT", cite="jiang2025aiqvit", paper="AIQViT")
class AIQViT(Method):
    """AIQViT; see the module docstring for the reading implemented and the choices."""

    Config = AIQConfig
    # the reconstruction engine has not been checked on the fully quantized roles: refuse quant.full
    supports_full = False
    blockwise = True  # the low-rank branches and DFQ bounds are trained block by block

    def protocol_plan(self) -> QuantPlan:
        c = self.config
        acts = reparam_activations(self, c)
        if c.dfq:
            acts[roles.POST_SOFTMAX] = QuantizerSpec(
                self.bits.a, kind="dynamic_focus",
                options=(("upper_percentiles", c.dfq_percentiles),
                         ("max_fractions", c.dfq_max_fractions),
                         ("lower_percentiles", c.dfq_lower_percentiles),
                         ("below", c.dfq_below), ("init", c.dfq_init)))
        return self.config.plan(self.weight_spec(), acts)

    def steps(self) -> Sequence[Step]:
        c = self.config
        learn = (("dfq",) if c.dfq else ()) + (("lowrank",) if c.lowrank else ())
        ranks = c.ranks if c.rank_search == "darts" else (c.rank,)
        recon = c.engine_config(self.bits, learn, lr_dfq=c.lr_dfq, lowrank_ranks=ranks, rank_cost=c.rank_cost,
                                search_frac=c.search_frac, lr_lowrank=c.lr_lowrank, lr_arch=c.lr_arch,
                                curriculum=c.curriculum, curriculum_start=c.curriculum_start,
                                curriculum_end=c.curriculum_end)
        return (Calibrate(),
                *optional(c.reparam, c.reparameterize(), RECALIBRATE),
                Reconstruct(recon),
                PlaceLowRank(merge=c.lowrank and c.lowrank_merge, merged=c.lowrank_merge,
                             fold=c.lowrank_eval == "folded"))


@dataclass(frozen=True)
class PlaceLowRank:
    """Where the trained low-rank branches end up: folded into the weights (`merge`) or left as FP
    side branches; the record says which (`merged`: lowrank_merge was asked for). Side branches
    are evaluated as one matmul with Q(W) + B A where `fold` (QuantLinear.fold_compensation)."""

    merge: bool
    merged: bool
    fold: bool = False

    def __call__(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        if self.merge:
            stats["lowrank_merged_layers"] = merge_lowrank(qm.model)
            stats["lowrank_extra_params"] = 0
        else:
            for m in qm.model.modules():
                if isinstance(m, QuantLinear) and isinstance(m.compensation, LowRankBranch):
                    m.fold_compensation = self.fold
        stats["lowrank_placement"] = "merged" if self.merged else "fp_side_branch"
        return stats


@torch.no_grad()
def merge_lowrank(model: torch.nn.Module) -> int:
    """Fold every low-rank branch into its layer's weight: W <- Q(W) + B A, then re-fit the
    weight quantizer on it (the compensation survives only as far as the new grid allows)."""
    merged = 0
    for m in model.modules():
        if isinstance(m, QuantLinear) and isinstance(m.compensation, LowRankBranch):
            w = m.quantized_weight().detach() + m.compensation.delta()
            m.compensation = None
            m.set_weight_matrix(w)
            if m.weight_quantizer is not None:
                m.weight_quantizer.calibrate(m.weight.detach())
            merged += 1
    return merged
