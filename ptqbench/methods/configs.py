"""Config mixins several methods' `Config` dataclasses derive from (shared knobs, not behaviour),
and the plan helper of the reparameterized activation side those knobs drive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ptqbench.algorithms.reconstruction import LOSS_REDUCTIONS, LOSSES, ReconConfig
from ptqbench.algorithms.reparam import REPARAM_ARITHMETIC
from ptqbench.methods.base import Bits, Method, ProtocolConfig, Step
from ptqbench.methods.steps import Calibrate, MeanScale, Reconstruct, Reparameterize, SharedScaleRule, Timed, \
    WeightsFP, WithFPTeacher, optional
from ptqbench.quant import roles
from ptqbench.quant.spec import ATTENTION_SCALES, QuantizerSpec, QuantPlan


@dataclass(frozen=True)
class ReparamConfig(ProtocolConfig):
    """RepQ-ViT's activation side, shared by the methods that start from it.

    Attributes:
    reparam: per-channel post-LN calibration + scale reparameterization (False: plain per-tensor).
    log_sqrt2: log-sqrt2 quantizer for post-softmax (False: uniform).
    round_zero_point: integer z~ (exact) vs the released code's fractional z~.
    exact_padding: Swin's window padding stays the image of 0 after the fold (exact) vs the
        released code's zeros.
    attention_scale: "q" (1/sqrt(d) before q's quantizer) or "product" (after the quantized
        q @ k^T, as the released RepQ-ViT family does; QuantPlan.attention_scale).
    reparam_arithmetic: "float64" (each folded value rounded once) or "float32" (the released
        fold's float32 operations in their order, bit for bit; algorithms.reparam).
    """

    reparam: bool = True
    log_sqrt2: bool = True
    round_zero_point: bool = True
    exact_padding: bool = True
    attention_scale: str = "q"
    reparam_arithmetic: str = "float64"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention_scale not in ATTENTION_SCALES:
            raise ValueError(f"attention_scale={self.attention_scale!r}; choose one of {ATTENTION_SCALES}")
        if self.reparam_arithmetic not in REPARAM_ARITHMETIC:
            raise ValueError(f"reparam_arithmetic={self.reparam_arithmetic!r}; choose one of {REPARAM_ARITHMETIC}")

    def plan(self, weight: Optional[QuantizerSpec], acts: dict[str, Optional[QuantizerSpec]]) -> QuantPlan:
        """The method's plan with this config's attention scale order."""
        return QuantPlan(weight, acts, attention_scale=self.attention_scale)

    def reparameterize(self, rule: SharedScaleRule = MeanScale()) -> Reparameterize:
        """The reparameterization step with this config's zero point, padding and arithmetic."""
        return Reparameterize(rule, self.round_zero_point, self.exact_padding, self.reparam_arithmetic)


def reparam_activations(method: Method, config: ReparamConfig) -> dict[str, Optional[QuantizerSpec]]:
    """The common protocol's activation quantizers with RepQ-ViT's changes: per-channel post-LN
    (to be reparameterized) when `config.reparam`, log-sqrt2 post-softmax when `config.log_sqrt2`."""
    acts = dict(method.common_plan().activations)
    if config.reparam:
        acts[roles.POST_LN] = method.act_spec(per_channel=True)
    if config.log_sqrt2:
        acts[roles.POST_SOFTMAX] = method.act_spec(kind="log_sqrt2")
    return acts


WEIGHT_LEARNING = ("rounding", "scale", "none")
LOW_BIT_ITERS, HIGH_BIT_ITERS = 1000, 200


def paper_iters(iters: Optional[int], bits: Bits) -> int:
    """Steps per unit: `iters`, or when null the papers' (I&S-ViT's) 1000 when W or A <= 4 bits, else 200."""
    if iters is not None:
        return iters
    return LOW_BIT_ITERS if min(bits.w, bits.a) <= 4 else HIGH_BIT_ITERS


def check_recon_options(recon_loss: str, iters: Optional[int]) -> None:
    """The reconstruction options every block-reconstruction method's config validates."""
    if recon_loss not in LOSSES:
        raise ValueError(f"recon_loss={recon_loss!r}; choose one of {LOSSES}")
    if iters is not None and iters < 0:
        raise ValueError(f"iters must be >= 0 or null, got {iters}")


@dataclass(frozen=True)
class BlockReconConfig(ReparamConfig):
    """Knobs of methods that finish with block reconstruction (DopQ-ViT, AIQViT), with the papers'
    iteration defaults (I&S-ViT's protocol, which both follow: 1000 iterations per block at
    W3A3/W4A4, 200 at W6A6, batch 64, 1024 images).

    Attributes (besides the reparameterized activation side's):
    iters: Adam steps per unit; null = the papers' (1000 when W or A <= 4 bits, else 200).
    batch_size: images per step (papers: 64).
    weight_learning: "rounding" (AdaRound), "scale" (LSQ step sizes) or "none".
    learn_act_scale: LSQ step sizes of the uniform activation quantizers.
    lr_act_scale / lr_weight_scale / lr_rounding: Adam learning rates.
    warmup, round_weight: AdaRound regularizer schedule.
    fp_input_prob: 0 = inputs from the quantized earlier units; 1 = FP inputs; between = QDrop mix.
    recon_loss: "mse" or "l1".
    recon_units: "all" or "blocks" (skip the patch embedding and the head).
    recon_seed: batch sampling and initializations.
    recon_holdout: fraction of the calibration images no unit trains on; their unit loss is
        recorded beside the training images' (an over-fitting check; ReconConfig.holdout).
    progress: tqdm bars per unit.
    """

    iters: Optional[int] = None
    batch_size: int = 64
    weight_learning: str = "rounding"
    learn_act_scale: bool = True
    lr_act_scale: float = 4e-5
    lr_weight_scale: float = 1e-5
    lr_rounding: float = 1e-3
    warmup: float = 0.2
    round_weight: float = 0.01
    fp_input_prob: float = 0.0
    recon_loss: str = "mse"
    recon_units: str = "all"
    recon_seed: int = 0
    recon_holdout: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_learning not in WEIGHT_LEARNING:
            raise ValueError(f"weight_learning={self.weight_learning!r}; choose one of {WEIGHT_LEARNING}")
        check_recon_options(self.recon_loss, self.iters)

    def engine_config(self, bits: Bits, learn: tuple[str, ...] = (), **extra: Any) -> ReconConfig:
        """The engine's config: the common knobs plus the method's own `learn` kinds and options."""
        iters = paper_iters(self.iters, bits)
        kinds = (("act_scale",) if self.learn_act_scale else ()) + {
            "rounding": ("weight_rounding",), "scale": ("weight_scale",), "none": ()}[self.weight_learning] + learn
        return ReconConfig(
            iters=iters, batch_size=self.batch_size, learn=kinds, lr_act_scale=self.lr_act_scale,
            lr_weight_scale=self.lr_weight_scale, lr_rounding=self.lr_rounding, warmup=self.warmup,
            round_weight=self.round_weight, fp_input_prob=self.fp_input_prob, loss=self.recon_loss,
            units=self.recon_units, seed=self.recon_seed, holdout=self.recon_holdout, progress=self.progress,
            **extra,
        )


# The second stage draws its batches from a stream of its own (the release draws both stages
# from one global generator, so they never repeat the first stage's order).
STAGE_THREE_SEED_OFFSET = 7919


@dataclass(frozen=True)
class SmoothOptimizationConfig(ReparamConfig):
    """I&S-ViT's three-stage smooth optimization as its released `test_quant.py` runs it (`ias`;
    `dopq` with `pipeline: ias`): activation quantizers fitted with FP weights, every unit's FP
    weights and biases trained against the FP model ("Q-Act, FP-W"); the reparameterization;
    weight quantizers fitted, every unit trained again through them ("Q-Act, Q-W").

    Attributes (besides the reparameterized activation side's):
    act_calib_images: calibration images the quantizers fit on (the first ones; released 64).
    stage_one / stage_three: run the FP-weight and the quantized-weight reconstruction.
    iters: Adam steps per unit and stage; null = 1000 when W or A <= 4 bits, else 200.
    batch_size: images per step.
    lr: Adam learning rate of the weights and biases (cosine to 0 per unit).
    recon_loss: "mse" or "l1"; loss_reduction: "sum_dim1" (released lp_loss) or "mean".
    recon_seed: batch sampling.
    recon_holdout: fraction of the calibration images neither stage trains on (ReconConfig.holdout).
    progress: tqdm bars per unit.
    """

    act_calib_images: Optional[int] = 64
    stage_one: bool = True
    stage_three: bool = True
    iters: Optional[int] = None
    batch_size: int = 64
    lr: float = 4e-5
    recon_loss: str = "mse"
    loss_reduction: str = "sum_dim1"
    recon_seed: int = 0
    recon_holdout: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_recon_options(self.recon_loss, self.iters)
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction={self.loss_reduction!r}; choose one of {LOSS_REDUCTIONS}")
        if self.act_calib_images is not None and self.act_calib_images < 1:
            raise ValueError(f"act_calib_images must be >= 1 or null (all), got {self.act_calib_images}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"lr must be > 0 and batch_size >= 1, got {self.lr}, {self.batch_size}")

    def stage_config(self, bits: Bits, fp_inputs: bool, seed: int) -> ReconConfig:
        """One stage's engine config: weights and biases train, FP or quantized unit inputs."""
        return ReconConfig(iters=paper_iters(self.iters, bits), batch_size=self.batch_size, learn=("weights",),
                           lr_weights=self.lr, loss=self.recon_loss, loss_reduction=self.loss_reduction,
                           fp_input_prob=1.0 if fp_inputs else 0.0, units="all", seed=seed,
                           holdout=self.recon_holdout, progress=self.progress)

    def smooth_steps(self, bits: Bits, rule: SharedScaleRule = MeanScale()) -> tuple[Step, ...]:
        """The three stages, the reparameterization with the shared-scale `rule`."""
        stage_one = Timed("stage_one_s", (Reconstruct(self.stage_config(bits, True, self.recon_seed),
                                                      prefix="stage_one_"),))
        stage_three = Timed("stage_three_s", (Reconstruct(
            self.stage_config(bits, False, self.recon_seed + STAGE_THREE_SEED_OFFSET), prefix="stage_three_"),))
        steps = (
            WeightsFP((Calibrate(images=self.act_calib_images), *optional(self.stage_one, stage_one))),
            *optional(self.reparam, self.reparameterize(rule)),
            Calibrate(desc="calibrate weights", key="weight_quantizers_fitted", images=self.act_calib_images),
            *optional(self.stage_three, stage_three),
        )
        # the FP teacher (a copy of the model) only serves the trained stages
        return (WithFPTeacher(steps),) if self.stage_one or self.stage_three else steps
