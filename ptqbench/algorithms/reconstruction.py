"""Block-wise reconstruction: the shared engine of DopQ-ViT and AIQViT (and BRECQ/QDrop/I&S-ViT-style
baselines).

For each unit in forward order (the caller passes them: patch embedding, every transformer block,
Swin's PatchMerging, head), a few quantization parameters of that unit are
trained with Adam so that the quantized unit's output matches the FP unit's output on the
calibration set:

    min  || f_q(x_in) - f_fp(x_fp) ||^2  (+ AdaRound regularizer, + low-rank rank cost)

x_fp is the FP model's input to the unit, f_fp(x_fp) the target. x_in is the output of the
already-reconstructed quantized units (`fp_input_prob=0`), the FP input (`1`), or an element-wise
random mix of the two (QDrop's drop, `0 < p < 1`). After training the unit's parameters are
frozen and its quantized outputs feed the next unit. Everything else in the model stays fixed.

What learns (`learn`): "weights" (the FP weights and biases of the unit's Linear/Conv layers,
through the weight quantizers' straight-through rounding when they are on: I&S-ViT), "act_scale"
(the "scale" group of every activation quantizer in the unit: LSQ step sizes of the uniform ones),
"weight_scale" (the weight quantizers' "scale" group), "weight_rounding" (AdaRound; exclusive with weight_scale), "dfq" (the "interval" group of
activation quantizers: the bounds of dynamic focusing quantizers), "lowrank" (AIQViT's B A branches
on every Linear, optionally with a relaxed rank search). What a quantizer trains in a group is its
own (`Quantizer.start_training`), so a new quantizer kind needs no change here.

FP targets (the FP units' outputs) are computed on the fly, or looked up in `fp_targets` (a sweep's
cache, `ptqbench.cache.ActivationStore`) when the caller passes one. They come from the model itself
with quantization off, or from `teacher` (an untouched FP copy) for a recipe whose earlier stage
already changed the FP weights (I&S-ViT's second reconstruction).

The loss is the element mean of the squared (or absolute) error (`loss_reduction="mean"`), or the
RepQ/BRECQ family's `lp_loss`: summed over dim 1 (tokens of a block output, classes of the logits)
and averaged over the rest (`"sum_dim1"`), which sets the balance against the rounding regularizer.

Deterministic under `seed`: batches come from a CPU torch.Generator seeded per unit, low-rank
initializations from another. Device-agnostic: data live on the model's device. On CPU the
per-image activations (each unit's inputs and targets) live in temporary files by default
(`ptqbench.algorithms.row_store`, the run's `recon_spill`), so memory does not grow with the
number of calibration images; a step reads its batch, the same bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.heap import free_heap_returned, large_blocks_unmapped_once
from ptqbench.models.structure import EMBED, HEAD, Unit
from ptqbench.progress import progress as progress_bar
from ptqbench.quant.base import Quantizer
from ptqbench.quant.calibration import quant_disabled, switched
from ptqbench.quant.learnable import AdaRoundQuantizer
from ptqbench.quant.lowrank import LowRankBranch
from ptqbench.quant.modules import QuantLinear, drop_cached_weights
from ptqbench.algorithms.fisher_dplr import FISHER_SCHEDULES, DPLRLoss, fisher_rows, fp_references, refresh_steps
from ptqbench.algorithms.perturbation_hessian import perturbation_hessian
from ptqbench.algorithms.row_store import Rows, RowStore, spill_enabled
from ptqbench.algorithms.streaming import params_frozen, run_unit, unit_layers
from ptqbench.quant.uniform import UniformQuantizer

LEARNABLE = ("weights", "act_scale", "weight_scale", "weight_rounding", "dfq", "lowrank")
LOSSES = ("mse", "l1")
LOSS_REDUCTIONS = ("mean", "sum_dim1")
BETA_SCHEDULES = ("cosine", "linear")
ROUNDING_SCHEDULES = ("cosine", "constant")
HEAD_LOSSES = ("recon", "kl")
LOSS_WEIGHTS = ("none", "perturbation_hessian", "fisher_dplr")
HESSIAN_SITES = ("inner", "output")
# learn kind -> (which quantizers, their trainable group, the ReconConfig field of its learning rate)
QUANTIZER_LEARNING = {
    "act_scale": ("activations", "scale", "lr_act_scale"),
    "dfq": ("activations", "interval", "lr_dfq"),
    "weight_scale": ("weights", "scale", "lr_weight_scale"),
}


class FPTargets(Protocol):
    """A store of FP unit outputs (`ptqbench.cache.ActivationStore`)."""

    def unit_outputs(self, model: nn.Module) -> Callable[[int, Callable[[], torch.Tensor]], torch.Tensor]: ...


@dataclass(frozen=True)
class ReconConfig:
    """Knobs of one reconstruction run (a method fills them from its YAML).

    Attributes:
        iters: Adam steps per unit.
        batch_size: calibration images per step.
        learn: which parameters train (subset of LEARNABLE).
        lr_weights / lr_act_scale / lr_weight_scale / lr_rounding / lr_dfq / lr_lowrank / lr_arch: Adam
            learning rates per parameter kind (every group follows one cosine schedule to 0).
        loss: "mse" or "l1" on the unit output.
        loss_reduction: "mean" over elements, or "sum_dim1" (sum over dim 1, mean over the rest).
        warmup: fraction of iters without the AdaRound regularizer (BRECQ/QDrop: 0.2).
        round_weight: weight of the AdaRound regularizer; beta anneals from beta_start to beta_end.
        fp_input_prob: 0 = quantized inputs, 1 = FP inputs, between = QDrop's element-wise mix.
        act_quant_prob: QDrop inside the unit: every activation quantizer outputs its quantized
            value with this probability per element and its FP input otherwise, while training
            (1 = always quantized).
        beta_schedule: AdaRound's beta from beta_start to beta_end after the warmup: "cosine", or
            "linear" (the released BRECQ/QDrop/APHQ `LinearTempDecay`, counting steps from 1, the
            regularizer on from step warmup * iters).
        rounding_schedule: the AdaRound learning rate follows the cosine schedule or stays "constant"
            (the releases' separate Adam with no scheduler).
        head_loss: the head unit's loss: the reconstruction loss ("recon") or KL(softmax(target) ||
            softmax(output)), batch mean ("kl", APHQ-ViT / FIMA-Q).
        loss_normalize: when set, the reconstruction loss is multiplied by this over its value at the
            first step (APHQ-ViT's `LossFunction`: 2 / L0), which fixes its balance against the
            rounding regularizer.
        loss_weights: "none", or "perturbation_hessian": each squared error is weighted by APHQ-ViT's
            average perturbation Hessian at the unit's output (ptqbench.algorithms.perturbation_hessian),
            computed on the FP model before the unit trains; `hessian_temperature`, `hessian_eps`,
            `hessian_chunk` (images per gradient batch) and `hessian_mean` (one weight tensor
            averaged over the images, else one per image) are its settings (released: 20, 1e-6, 32, true).
            `hessian_site`: "inner" takes a unit's Hessian at its `Unit.inner_output` where it has
            one (ViT's patch embedding, before the class token and position embedding, as the release
            perturbs it; zero weights on the prepended rows, whose error is zero), "output" at the
            unit's output. A difference of gradients 1e-6 apart follows the float rounding of the
            site's values, so the two differ by more than rounding (docs/methods/aphq.md).
            "fisher_dplr": FIMA-Q's diagonal plus low-rank Fisher loss (ptqbench.algorithms.fisher_dplr),
            refreshed `fisher_k` times while the unit trains (`fisher_schedule`: "spread" over the
            steps or the "first" k), weights `fisher_p1` (low rank) and `fisher_p2` (diagonal); it
            uses `hessian_temperature` and `hessian_chunk` and normalizes itself (leave
            loss_normalize null).
        curriculum: order samples easy -> hard by their initial per-sample loss and sample from a
            pool that grows from `curriculum_start` of the set to all of it by `curriculum_end` of
            the iterations (AIQViT).
        lowrank_ranks: candidate ranks of the low-rank branch (one = fixed rank).
        search_frac: fraction of iters during which the rank search runs before `commit()`; the
            architecture logits start moving halfway through it (B starts at zero, so until the
            branches have learned something the loss carries no information about ranks).
        rank_cost: weight of the expected-extra-parameter term (relative to the Linear's size).
        units: "all" units, or "blocks" (transformer blocks and PatchMerging only).
        holdout: fraction of the calibration images no unit trains on (the same images for every
            unit, drawn from `seed`): their unit loss before and after training is recorded
            beside the training images' (`loss_train_*`, `loss_holdout_*`), which shows
            over-fitting of the learned parameters (the loss weights, APHQ-ViT's Hessian and
            FIMA-Q's Fisher, still see every image). 0 (default): every image trains.
        seed: batch sampling and initializations.
        progress: show a tqdm bar per unit.
    """

    iters: int = 1000
    batch_size: int = 64
    learn: tuple[str, ...] = ("act_scale", "weight_rounding")
    lr_weights: float = 4e-5
    lr_act_scale: float = 4e-5
    lr_weight_scale: float = 1e-5
    lr_rounding: float = 1e-3
    lr_dfq: float = 1e-3
    lr_lowrank: float = 1e-3
    lr_arch: float = 1e-2
    loss: str = "mse"
    loss_reduction: str = "mean"
    warmup: float = 0.2
    round_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    fp_input_prob: float = 0.0
    act_quant_prob: float = 1.0
    beta_schedule: str = "cosine"
    rounding_schedule: str = "cosine"
    head_loss: str = "recon"
    loss_normalize: Optional[float] = None
    loss_weights: str = "none"
    hessian_temperature: float = 20.0
    hessian_eps: float = 1e-6
    hessian_chunk: int = 32
    hessian_mean: bool = True
    hessian_site: str = "inner"
    fisher_k: int = 5
    fisher_p1: float = 1.0
    fisher_p2: float = 1.0
    fisher_schedule: str = "spread"
    curriculum: bool = False
    curriculum_start: float = 0.25
    curriculum_end: float = 0.5
    lowrank_ranks: tuple[int, ...] = (8,)
    search_frac: float = 0.3
    rank_cost: float = 1e-3
    units: str = "all"
    holdout: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "learn", tuple(self.learn))
        object.__setattr__(self, "lowrank_ranks", tuple(int(r) for r in self.lowrank_ranks))
        bad = sorted(set(self.learn) - set(LEARNABLE))
        if bad:
            raise ValueError(f"reconstruction cannot learn {bad}; choose from {LEARNABLE}")
        if "weight_scale" in self.learn and "weight_rounding" in self.learn:
            raise ValueError("learn weight_scale or weight_rounding, not both (AdaRound keeps the grid fixed)")
        if "weights" in self.learn and "weight_rounding" in self.learn:
            raise ValueError("learn weights or weight_rounding, not both (AdaRound rounds a fixed weight)")
        if self.iters < 0 or self.batch_size < 1:
            raise ValueError(f"iters must be >= 0 and batch_size >= 1, got {self.iters}, {self.batch_size}")
        if self.loss not in LOSSES:
            raise ValueError(f"reconstruction loss {self.loss!r}; choose one of {LOSSES}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction={self.loss_reduction!r}; choose one of {LOSS_REDUCTIONS}")
        if self.units not in ("all", "blocks"):
            raise ValueError(f"units={self.units!r}; choose 'all' or 'blocks'")
        for key, allowed in (("beta_schedule", BETA_SCHEDULES), ("rounding_schedule", ROUNDING_SCHEDULES),
                             ("head_loss", HEAD_LOSSES), ("loss_weights", LOSS_WEIGHTS),
                             ("fisher_schedule", FISHER_SCHEDULES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r}; choose one of {allowed}")
        if self.loss_weights != "none" and self.loss != "mse":
            raise ValueError(f"loss_weights={self.loss_weights!r} weighs squared errors; use loss='mse'")
        if self.loss_weights == "fisher_dplr" and self.iters:
            refresh_steps(self.iters, self.fisher_k, self.fisher_schedule)  # validates k against iters
        if self.hessian_chunk < 1 or self.hessian_temperature <= 0:
            raise ValueError("hessian_chunk must be >= 1 and hessian_temperature > 0")
        if self.hessian_site not in HESSIAN_SITES:
            raise ValueError(f"hessian_site={self.hessian_site!r}; choose one of {HESSIAN_SITES}")
        if self.loss_normalize is not None and self.loss_normalize <= 0:
            raise ValueError(f"loss_normalize must be > 0 or null, got {self.loss_normalize}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must lie in [0, 1) (a fraction of the calibration images), got {self.holdout}")
        for key in ("warmup", "fp_input_prob", "act_quant_prob", "curriculum_start", "curriculum_end", "search_frac"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must lie in [0, 1], got {getattr(self, key)}")
        if not self.lowrank_ranks or min(self.lowrank_ranks) < 0:
            raise ValueError(f"lowrank_ranks must be non-negative, got {list(self.lowrank_ranks)}")


@dataclass
class _UnitState:
    """What one unit trains, and how to freeze it afterwards."""

    groups: list[dict[str, Any]] = field(default_factory=list)
    weights: list[nn.Parameter] = field(default_factory=list)
    training: list[Quantizer] = field(default_factory=list)
    rounders: dict[str, tuple[nn.Module, AdaRoundQuantizer]] = field(default_factory=dict)
    branches: dict[str, tuple[QuantLinear, LowRankBranch]] = field(default_factory=dict)


def _activation_quantizers(unit: Unit) -> list[Quantizer]:
    return [m for m in unit.module.modules() if isinstance(m, Quantizer) and m.role != "weight" and m.enabled]


def prepare_unit(unit: Unit, layers: dict[str, nn.Module], cfg: ReconConfig, gen: torch.Generator) -> _UnitState:
    """Switch on what `cfg.learn` trains in `unit` (scales to Parameters, AdaRound, low-rank
    branches) and return it with its Adam parameter groups; `finish_unit` freezes it again."""
    st = _UnitState()
    learn = set(cfg.learn)
    quantizers = {
        "activations": [q for q in _activation_quantizers(unit) if q.calibrated],
        "weights": [m.weight_quantizer for m in layers.values() if m.weight_quantizer is not None
                    and m.weight_quantizer.enabled and m.weight_quantizer.calibrated],
    }
    if "weights" in learn:
        st.weights = [p for m in layers.values() for p in (m.weight, m.bias) if p is not None]
        for p in st.weights:
            p.requires_grad_(True)
        if st.weights:
            st.groups.append({"params": st.weights, "lr": cfg.lr_weights, "name": "weights"})
    for kind in ("act_scale", "dfq", "weight_scale"):
        if kind not in learn:
            continue
        which, group, lr = QUANTIZER_LEARNING[kind]
        params = []
        for q in quantizers[which]:
            got = q.start_training(group)
            if got:
                st.training.append(q)
                params += got
        if params:
            st.groups.append({"params": params, "lr": getattr(cfg, lr), "name": kind})
    weighted = {n: m for n, m in layers.items() if isinstance(m.weight_quantizer, UniformQuantizer)
                and m.weight_quantizer.enabled and m.weight_quantizer.calibrated}
    if "weight_rounding" in learn:
        for n, m in weighted.items():
            rq = AdaRoundQuantizer(m.weight_quantizer, m.weight)
            st.rounders[n] = (m, m.weight_quantizer)
            m.weight_quantizer = rq
        params = [m.weight_quantizer.alpha for m, _ in st.rounders.values()]
        if params:
            st.groups.append({"params": params, "lr": cfg.lr_rounding, "name": "weight_rounding"})
    if "lowrank" in learn and max(cfg.lowrank_ranks) > 0:
        for n, m in layers.items():
            if isinstance(m, QuantLinear):
                br = LowRankBranch(m.in_features, m.out_features, cfg.lowrank_ranks, gen, m.weight.device)
                m.compensation = br
                st.branches[n] = (m, br)
        if st.branches:
            st.groups.append({"params": [p for _, b in st.branches.values() for p in (b.A, b.B)],
                              "lr": cfg.lr_lowrank, "name": "lowrank"})
            arch = [b.arch for _, b in st.branches.values() if b.arch is not None]
            if arch:
                st.groups.append({"params": arch, "lr": cfg.lr_arch, "name": "arch"})
    return st


@torch.no_grad()
def finish_unit(st: _UnitState) -> dict[str, int]:
    """Freeze what the unit learned: scales back to buffers, hard rounding written into the weight,
    DFQ bounds fixed, zero-rank branches removed. The gradients of the last step are dropped: a
    trained weight would otherwise hold a gradient of its own size to the end of the run."""
    for group in st.groups:
        for p in group["params"]:
            p.grad = None
    for p in st.weights:
        p.requires_grad_(False)
    for q in st.training:
        q.stop_training()
    for layer, base in st.rounders.values():
        w = layer.weight_quantizer.hard_weight()
        layer.weight_quantizer = base
        layer.set_weight_matrix(w.reshape(layer.weight.shape[0], -1))
    ranks = {}
    for name, (layer, br) in st.branches.items():
        br.commit()
        for p in br.parameters():
            p.requires_grad_(False)
        ranks[name] = br.rank
        if br.rank == 0:
            layer.compensation = None
    return ranks


def _loss(out: torch.Tensor, target: torch.Tensor, kind: str, reduction: str = "mean",
          per_sample: bool = False, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    d = out - target
    v = d.pow(2) if kind == "mse" else d.abs()
    if weights is not None:
        v = v * weights
    if reduction == "sum_dim1" and v.dim() > 1:
        v = v.sum(1)
    return v.reshape(v.shape[0], -1).mean(1) if per_sample else v.mean()


def _unit_loss(out: torch.Tensor, target: torch.Tensor, cfg: ReconConfig, head: bool,
               weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The training loss of one batch before normalization: KL on the logits for the head when
    `cfg.head_loss` says so, else the configured reconstruction loss (element-weighted by
    `weights` when given)."""
    if head and cfg.head_loss == "kl":
        return F.kl_div(F.log_softmax(out, dim=-1), F.softmax(target, dim=-1), reduction="batchmean")
    return _loss(out, target, cfg.loss, cfg.loss_reduction, weights=weights)


def _beta(cfg: ReconConfig, it: int, warm: int) -> Optional[float]:
    """AdaRound's beta at step `it` (0-based), or None while the regularizer is off."""
    if cfg.beta_schedule == "linear":  # LinearTempDecay(t_max=iters, rel_start_decay=warmup), t counted from 1
        t, start = it + 1, cfg.warmup * cfg.iters
        if t < start:
            return None
        rel = (t - start) / max(cfg.iters - start, 1e-12)
        return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * max(0.0, 1 - rel)
    if it < warm:
        return None
    progress = (it - warm) / max(cfg.iters - warm, 1)
    return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * (1 + math.cos(math.pi * progress)) / 2


def _scheduler(opt: torch.optim.Optimizer, groups: list[dict[str, Any]], cfg: ReconConfig, t_max: int):
    """Cosine to 0 for every group, or for all but the rounding group when it stays constant."""
    if cfg.rounding_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=0.0)
    cosine = lambda t: (1 + math.cos(math.pi * min(t, t_max) / t_max)) / 2  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(
        opt, [(lambda t: 1.0) if g["name"] == "weight_rounding" else cosine for g in groups])


def _forward_batches(unit: Unit, x: Rows, bs: int, spill: bool = False) -> Rows:
    """The unit's outputs on `x`, run in chunks of `bs` images: one tensor, or a RowStore written
    chunk by chunk when `spill`."""
    if spill:
        return RowStore.of_chunks((unit.forward(c) for c in x.split(bs)), x.shape[0])
    return torch.cat(run_unit(unit, list(x.split(bs))))  # Tensor.split or RowStore.split


def _kept(x: torch.Tensor, spill: bool, bs: int) -> Rows:
    """`x` as the run keeps per-image activations: itself, or a RowStore when `spill`."""
    return RowStore.of_chunks(x.split(bs), x.shape[0]) if spill else x


def holdout_split(n: int, cfg: ReconConfig) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(training, held-out) image indices, each sorted, for `cfg.holdout` of `n` images; None when
    nothing is held out. A stream of its own, so batch draws do not depend on the split."""
    k = int(round(cfg.holdout * n))
    if k == 0:
        return None
    if k >= n:
        raise ValueError(f"holdout={cfg.holdout} of {n} calibration images leaves none to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + 17))
    return perm[k:].sort().values, perm[:k].sort().values


def _train_unit(unit: Unit, layers: dict[str, nn.Module], x_q: Rows, x_fp: Optional[Rows],
                target: Rows, cfg: ReconConfig, index: int,
                weights: Optional[torch.Tensor] = None, fisher: Optional["_Fisher"] = None) -> dict[str, Any]:
    dev = x_q.device
    gen = torch.Generator().manual_seed(cfg.seed * 1000003 + index)
    st = prepare_unit(unit, layers, cfg, gen)
    split = holdout_split(x_q.shape[0], cfg)
    base = torch.arange(x_q.shape[0]) if split is None else split[0]  # the images batches come from
    n = base.shape[0]
    bs = min(cfg.batch_size, n)
    info: dict[str, Any] = {"unit": unit.name, "params": sum(p.numel() for g in st.groups for p in g["params"])}
    x_eval = x_fp if cfg.fp_input_prob >= 1.0 else x_q  # what the unit trains on (the mix: its quantized side)

    def losses(key: str) -> torch.Tensor:
        with torch.no_grad():
            if isinstance(target, RowStore):  # per batch, as the rows are read (on CPU the same values)
                per = torch.cat([_loss(unit.forward(xb), tb, cfg.loss, cfg.loss_reduction, per_sample=True)
                                 for xb, tb in zip(x_eval.split(bs), target.split(bs))])
            else:
                per = _loss(_forward_batches(unit, x_eval, bs), target, cfg.loss, cfg.loss_reduction, per_sample=True)
        info[f"loss_{key}"] = float(per.mean())
        if split is not None:
            info[f"loss_train_{key}"] = float(per[split[0]].mean())
            info[f"loss_holdout_{key}"] = float(per[split[1]].mean())
        return per

    start = losses("start")
    drop_cached_weights(unit.module)  # the steps quantize the weights afresh; the cache is for evaluation
    order = base[torch.argsort(start[base].cpu(), stable=True)] if cfg.curriculum else base
    if not st.groups or cfg.iters == 0:
        info.update({k.replace("_start", "_end"): v for k, v in info.items() if k.endswith("_start")})
        info["ranks"] = finish_unit(st)
        return info
    opt = torch.optim.Adam([{k: v for k, v in g.items() if k != "name"} for g in st.groups])
    sched = _scheduler(opt, st.groups, cfg, cfg.iters)
    head = unit.kind == HEAD
    drops = [q for q in _activation_quantizers(unit) if q.calibrated] if cfg.act_quant_prob < 1.0 else []
    for q in drops:
        q.drop = (cfg.act_quant_prob, gen)
    t_train = time.perf_counter()
    try:
        _train_loop(unit, st, x_q, x_fp, target, cfg, opt, sched, gen, order, base, bs, head, dev, weights, fisher)
    finally:
        for q in drops:
            q.drop = None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    info["train_s"] = round(time.perf_counter() - t_train, 4)  # the steps alone (a unit's seconds add its setup)
    if fisher is not None:
        info.update(fisher_refreshes=len(fisher.steps), fisher_refresh_s=round(fisher.refresh_s, 4))
    info["ranks"] = finish_unit(st)
    losses("end")
    return info


def _train_loop(unit: Unit, st: _UnitState, x_q: Rows, x_fp: Optional[Rows], target: Rows,
                cfg: ReconConfig, opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator,
                order: torch.Tensor, base: torch.Tensor, bs: int, head: bool, dev: torch.device,
                weights: Optional[torch.Tensor] = None, fisher: Optional["_Fisher"] = None) -> None:
    """The Adam steps of one unit; batches come from the images `base` (in curriculum `order`)."""
    n = base.shape[0]
    search_iters = int(cfg.search_frac * cfg.iters) if any(b.searching for _, b in st.branches.values()) else 0
    warm = int(cfg.warmup * cfg.iters)
    bar = progress_bar(range(cfg.iters), desc=f"reconstruct {unit.name}", disable=not cfg.progress)
    arch = [b.arch for _, b in st.branches.values() if b.arch is not None]
    first_rec: Optional[float] = None
    for p in arch:  # B starts at 0, so the loss says nothing about ranks yet: let the branches learn first
        p.requires_grad_(False)
    for it in bar:
        if arch and it == search_iters // 2:
            for p in arch:
                p.requires_grad_(True)
        if search_iters and it == search_iters:
            for _, br in st.branches.values():
                br.commit()  # keeps the chosen rank; the optimizer sees the new (smaller) tensors
            groups = _regroup(st, cfg)
            if not groups:  # every branch of the unit chose rank 0 and nothing else learns
                break
            opt = torch.optim.Adam([{k: v for k, v in g.items() if k != "name"} for g in groups])
            sched = _scheduler(opt, groups, cfg, cfg.iters - it)
        pool = n
        if cfg.curriculum:
            span = max(cfg.curriculum_end * cfg.iters, 1)
            frac = min(1.0, cfg.curriculum_start + (1 - cfg.curriculum_start) * it / span)
            pool = max(bs, math.ceil(frac * n))
        idx = order[torch.randint(0, pool, (bs,), generator=gen)] if pool < n else base[torch.randperm(n, generator=gen)[:bs]]
        idx = idx.to(dev)
        xb = x_q[idx]
        if cfg.fp_input_prob >= 1.0:
            xb = x_fp[idx]
        elif cfg.fp_input_prob > 0.0:
            # quantized where u < 1 - p, as the released QDrop ports draw it (the same masks from the
            # same generator state: docs/anchors/aphq/unit_spread.py)
            keep = torch.rand(xb.shape, generator=gen).to(dev) < 1.0 - cfg.fp_input_prob
            xb = torch.where(keep, xb, x_fp[idx])
        if fisher is not None and it in fisher.steps:
            t_refresh = time.perf_counter()
            with large_blocks_unmapped_once():  # ptqbench.heap: a pass over image chunks, not the steps' batches
                if fisher.refs is None:
                    fisher.refs = fp_references(fisher.rest, target, cfg.hessian_temperature, cfg.hessian_chunk)
                fisher.loss.refresh(*fisher_rows(unit, fisher.rest, x_fp, target, cfg.hessian_temperature,
                                                 cfg.hessian_chunk, fisher.refs))
            fisher.refresh_s += time.perf_counter() - t_refresh
        out = unit.forward(xb)
        if fisher is not None:
            rec = fisher.loss(out, target[idx])
        else:
            w = None if weights is None else weights if weights.shape[0] == 1 else weights[idx]
            rec = _unit_loss(out, target[idx], cfg, head, w)
        if cfg.loss_normalize is not None:
            if first_rec is None:
                first_rec = float(rec.detach())
            rec = rec * cfg.loss_normalize / first_rec
        loss = rec
        beta = _beta(cfg, it, warm) if st.rounders else None
        if beta is not None:
            loss = loss + cfg.round_weight * sum(m.weight_quantizer.regularizer(beta) for m, _ in st.rounders.values())
        if search_iters and it < search_iters:
            cost = sum(br.expected_params() / (br.in_features * br.out_features) for _, br in st.branches.values())
            loss = loss + cfg.rank_cost * cost
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if it % 50 == 0 or it == cfg.iters - 1:
            bar.set_postfix(loss=f"{float(rec.detach()):.4g}")
    bar.close()


def _regroup(st: _UnitState, cfg: ReconConfig) -> list[dict[str, Any]]:
    """Parameter groups after the rank search committed (branch tensors were replaced)."""
    groups = [g for g in st.groups if g["name"] not in ("lowrank", "arch")]
    live = [p for _, b in st.branches.values() if b.rank > 0 for p in (b.A, b.B)]
    if live:
        groups.append({"params": live, "lr": cfg.lr_lowrank, "name": "lowrank"})
    return groups


@dataclass
class _Fisher:
    """FIMA-Q's loss of one unit: the DPLR state, the refresh steps and the FP units after it."""

    loss: DPLRLoss
    steps: set[int]
    rest: list[Unit]
    refs: Optional[list[torch.Tensor]] = None  # the FP softmax per chunk, taken at the first refresh
    refresh_s: float = 0.0  # seconds spent refreshing: `fisher_k` refreshes per unit whatever the step budget


@dataclass(frozen=True)
class FPTeacher:
    """An FP copy of the model taken before a recipe changed its weights, and its units (parallel to
    the student's): the source of FP inputs and targets for a later reconstruction stage."""

    model: nn.Module
    units: list[Unit]


def _fp(units: list[Unit]) -> Any:
    """The quantizers of `units` off inside the block (FIMA-Q's refresh runs the units after the
    training one in FP; nothing of theirs runs during the unit's own steps)."""
    return switched([m for u in units for m in u.module.modules() if isinstance(m, Quantizer)], False)


def reconstruct(model: nn.Module, units: list[Unit], calib: torch.Tensor, cfg: ReconConfig,
                fp_targets: Optional[FPTargets] = None, teacher: Optional[FPTeacher] = None) -> dict[str, Any]:
    """Reconstruct `units` of `model` (already calibrated and quantized; its units in forward order)
    in order on `calib`; FP targets come from `fp_targets` when given, else are computed by `model`
    with quantization off, or by `teacher` when given.

    Returns statistics for the run record: per unit the loss before and after, trained parameter
    count and chosen low-rank ranks; seconds per unit and per iteration; extra low-rank parameters.
    """
    if not units:
        raise ValueError("reconstruct needs the model's units in forward order (QuantizedModel.units); got none")
    dev = calib.device
    spill = spill_enabled(dev)
    x_q: Rows = calib
    x_fp: Optional[Rows] = calib
    per_unit, ranks, t0 = [], {}, time.perf_counter()
    if teacher is not None and len(teacher.units) != len(units):
        raise ValueError(f"the FP teacher has {len(teacher.units)} units, the model {len(units)}")
    source = teacher.model if teacher is not None else model
    lookup = fp_targets.unit_outputs(source) if fp_targets is not None else None  # keyed on the FP state before training
    try:
        with params_frozen(model):  # only the parameters a unit's prepare_unit() enables train
            for i, unit in enumerate(units):
                bs = min(cfg.batch_size, x_q.shape[0])

                fp_unit = teacher.units[i] if teacher is not None else unit

                def fp_target(unit: Unit = fp_unit, x: Rows = x_fp, bs: int = bs, spill: bool = False) -> Rows:
                    with torch.no_grad(), quant_disabled(source):
                        return _forward_batches(unit, x, bs, spill)

                target = fp_target(spill=spill) if lookup is None else _kept(lookup(i, fp_target).to(dev), spill, bs)
                del fp_target  # its default argument holds the FP input
                blockish = unit.kind not in (EMBED, HEAD)
                if cfg.units == "blocks" and not blockish:
                    with torch.no_grad():
                        x_q = _forward_batches(unit, x_q, bs, spill)
                    x_fp = target
                    continue
                t_unit = time.perf_counter()
                weights = None
                if cfg.loss_weights == "perturbation_hessian" and cfg.iters and not (
                        unit.kind == HEAD and cfg.head_loss == "kl"):
                    fp_units = teacher.units if teacher is not None else units
                    site = fp_units[i].inner_output if cfg.hessian_site == "inner" else None
                    with quant_disabled(source), large_blocks_unmapped_once():  # ptqbench.heap, as the Fisher refresh
                        weights = perturbation_hessian(fp_units, i, x_fp, site=site, temperature=cfg.hessian_temperature,
                                                       eps=cfg.hessian_eps, chunk=cfg.hessian_chunk,
                                                       mean=cfg.hessian_mean)
                    if site is not None:  # the rows the unit prepends after the site (class token): zero error
                        weights = F.pad(weights, (0, 0, target.shape[1] - weights.shape[1], 0))
                fisher = None
                if cfg.loss_weights == "fisher_dplr" and cfg.iters and not (unit.kind == HEAD and cfg.head_loss == "kl"):
                    rest = teacher.units[i + 1:] if teacher is not None else units[i + 1:]
                    fisher = _Fisher(DPLRLoss(cfg.fisher_p1, cfg.fisher_p2),
                                     refresh_steps(cfg.iters, cfg.fisher_k, cfg.fisher_schedule), rest)
                layers = unit_layers(model, unit)
                if cfg.fp_input_prob == 0.0 and fisher is None:
                    x_fp = None  # the steps see quantized inputs only: the FP input is not held through them
                with torch.enable_grad(), _fp(fisher.rest if fisher is not None else []):
                    info = _train_unit(unit, layers, x_q, x_fp, target, cfg, i, weights, fisher)
                info["seconds"] = round(time.perf_counter() - t_unit, 3)
                ranks.update(info.pop("ranks"))
                per_unit.append(info)
                with torch.no_grad():
                    x_q = _forward_batches(unit, x_q, bs, spill)
                drop_cached_weights(unit.module)  # the loop does not come back to this unit; evaluation refills them
                free_heap_returned()  # this unit's freed blocks would otherwise stay resident (ptqbench.heap)
                x_fp = target
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
    finally:
        for m in model.modules():  # branches added during the run were not there to be restored
            if isinstance(m, LowRankBranch):
                for p in m.parameters():
                    p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    trained = [u for u in per_unit if u["params"]]
    iters = cfg.iters * len(trained)
    extra = sum(m.num_params() for m in model.modules() if isinstance(m, LowRankBranch))
    return {
        "recon_units": len(per_unit),
        "recon_s": round(seconds, 3),
        "recon_s_per_iter": round(sum(u["seconds"] for u in trained) / iters, 5) if iters else 0.0,
        "recon_loss_start": round(sum(u["loss_start"] for u in per_unit), 6),
        "recon_loss_end": round(sum(u["loss_end"] for u in per_unit), 6),
        **{f"recon_{k}": round(sum(u[k] for u in per_unit), 6)
           for k in ("loss_train_start", "loss_train_end", "loss_holdout_start", "loss_holdout_end")
           if per_unit and k in per_unit[0]},
        "recon_per_unit": per_unit,
        "lowrank_ranks": ranks,
        "lowrank_extra_params": extra,
    }
