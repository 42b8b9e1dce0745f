"""What QDrop and BRECQ (as APHQ-ViT's configs port them to ViTs) share: the AdaLog / APHQ-ViT
quantizer set, its output-MSE grid-search calibration, and block reconstruction with AdaRound and
learned activation scales. Each method's file sets its own defaults (docs/methods/qdrop.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ptqbench.algorithms.grid_search import GridSearchConfig, GridShape
from ptqbench.algorithms.reconstruction import HEAD_LOSSES, ReconConfig
from ptqbench.methods.base import Method, Step
from ptqbench.methods.configs import ReparamConfig, check_recon_options
from ptqbench.methods.steps import Calibrate, GridSearch, Reconstruct, Timed, optional
from ptqbench.quant import roles
from ptqbench.quant.spec import QuantizerSpec, QuantPlan

RECON_INPUTS = ("qdrop", "quantized", "fp")  # the release's optim_mode: qdrop, qinp, rinp
MATMUL_ROLES = (roles.Q, roles.K, roles.POST_SOFTMAX, roles.V)


@dataclass(frozen=True)
class GridReconConfig(ReparamConfig):
    """Attributes (the defaults are APHQ-ViT's `configs/4bit/qdrop_baseline.py` and
    `utils/block_recon.py`; besides the reparameterization keys of ReparamConfig):
    patch_input_bits: null: the patch embedding's image input stays FP (the release's 8-bit conv
        input is not quantized); a width quantizes it per tensor, not searched.
    weight_search / act_search (and their percentiles): the starting ranges before the grid search,
        and the final ones of any quantizer it does not search (a quantized patch input).
    grid_candidates / grid_rounds: the calibration grid (`eq_n` 128, `search_round` 3).
    search_images: the grid search runs on the first this many calibration images (the release's
        `calib_size` 128, the first 128 of its 1024 `optim_size` images); null = all.
    search_image_chunk: images whose candidate scores one sum adds up (the release's
        `calib_batch_size`, 32: the order of the sums decides near-ties; GridSearchConfig.image_chunk).
    grid_zero_points / grid_narrow_quantile / grid_conv_percentiles / grid_conv_spacing /
        grid_matmul_quantiles: where the candidates lie (GridShape; the release's 16 zero points,
        0.9-quantile narrowest scale, conv 0.99-0.9999 by a square root, matmul 0.99-0.99999).
    iters: Adam steps per unit (released 20000); batch_size: images per step (32).
    inputs: unit inputs during reconstruction: "qdrop" (each element from the quantized model with
        probability `drop_prob`, else FP), "quantized" or "fp".
    drop_prob: QDrop's probability of the quantized value, at the unit input and inside every
        activation quantizer (1 = no drop).
    lr_act_scale: Adam on the activation scales (cosine to 0); lr_rounding: Adam on AdaRound's
        alpha (constant).
    round_weight, warmup, beta_start, beta_end: AdaRound's regularizer, beta linear after warmup.
    loss_normalize: reconstruction loss x this / its first value (APHQ-ViT: 2; null: off).
    head_loss: "kl" (released) or "recon" for the head unit.
    recon_seed: batch sampling and drops; recon_holdout: fraction of the calibration images no unit
        trains on, their loss recorded (ReconConfig.holdout); progress: tqdm bars.
    """

    patch_input_bits: Optional[int] = None
    weight_search: str = "minmax"
    act_search: str = "minmax"
    log_sqrt2: bool = False
    round_zero_point: bool = True
    attention_scale: str = "product"
    reparam_arithmetic: str = "float32"
    grid_candidates: int = 128
    grid_rounds: int = 3
    search_images: Optional[int] = 128
    search_image_chunk: int = 32
    grid_zero_points: int = 16
    grid_narrow_quantile: float = 0.9
    grid_conv_percentiles: tuple[float, float] = (0.99, 0.9999)
    grid_conv_spacing: float = 0.5
    grid_matmul_quantiles: tuple[float, float] = (0.99, 0.99999)
    iters: Optional[int] = 20000
    batch_size: int = 32
    inputs: str = "qdrop"
    drop_prob: float = 0.5
    lr_act_scale: float = 4e-5
    lr_rounding: float = 1e-3
    round_weight: float = 0.01
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    loss_normalize: Optional[float] = 2.0
    head_loss: str = "kl"
    recon_seed: int = 0
    recon_holdout: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_recon_options("mse", self.iters)
        if self.inputs not in RECON_INPUTS:
            raise ValueError(f"inputs={self.inputs!r}; choose one of {RECON_INPUTS}")
        if self.head_loss not in HEAD_LOSSES:
            raise ValueError(f"head_loss={self.head_loss!r}; choose one of {HEAD_LOSSES}")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1], got {self.drop_prob}")
        try:
            self.search_config()
        except ValueError as e:  # GridShape names its fields; the user set method.grid_<field>
            raise ValueError(f"grid search (keys method.grid_*, method.search_image_chunk): {e}") from e
        if self.search_images is not None and self.search_images < 1:
            raise ValueError(f"search_images must be >= 1 or null (all), got {self.search_images}")

    def search_config(self) -> GridSearchConfig:
        shape = GridShape(self.grid_zero_points, self.grid_narrow_quantile, self.grid_conv_percentiles,
                          self.grid_conv_spacing, self.grid_matmul_quantiles)  # GridShape makes the lists tuples
        return GridSearchConfig(self.grid_candidates, self.grid_rounds, image_chunk=self.search_image_chunk, shape=shape)

    def engine_config(self) -> ReconConfig:
        qdrop = self.inputs == "qdrop"
        fp_prob = {"qdrop": 1.0 - self.drop_prob, "quantized": 0.0, "fp": 1.0}[self.inputs]
        return ReconConfig(
            iters=self.iters or 0, batch_size=self.batch_size, learn=("act_scale", "weight_rounding"),
            lr_act_scale=self.lr_act_scale, lr_rounding=self.lr_rounding, loss="mse", loss_reduction="sum_dim1",
            warmup=self.warmup, round_weight=self.round_weight, beta_start=self.beta_start, beta_end=self.beta_end,
            fp_input_prob=fp_prob, act_quant_prob=self.drop_prob if qdrop else 1.0, beta_schedule="linear",
            rounding_schedule="constant", head_loss=self.head_loss, loss_normalize=self.loss_normalize,
            units="all", seed=self.recon_seed, holdout=self.recon_holdout, progress=self.progress)


class GridReconRecipe:
    """What a method of this family runs (mixed into its Method class before `Method`): the plan and
    the steps of its GridReconConfig."""

    config: GridReconConfig
    blockwise = True
    supports_full = False  # the grid search and the engine have not been checked on the fully quantized roles

    def protocol_plan(self) -> QuantPlan:
        return grid_recon_plan(self, self.config)  # type: ignore[arg-type]

    def steps(self) -> Sequence[Step]:
        return grid_recon_steps(self.config)


def grid_recon_plan(method: Method, c: GridReconConfig) -> QuantPlan:
    """Asymmetric uniform everywhere: weights per row, Linear inputs per tensor (per channel after a
    LayerNorm, to be reparameterized), the four matmul operands per head. The grid search replaces
    the calibrated starting ranges."""
    acts: dict[str, Optional[QuantizerSpec]] = {r: method.act_spec() for r in roles.ACTIVATION_ROLES}
    acts[roles.PATCH_IN] = method.act_spec(bits=c.patch_input_bits) if c.patch_input_bits else None
    if c.reparam:
        acts[roles.POST_LN] = method.act_spec(per_channel=True)
    for r in MATMUL_ROLES:
        acts[r] = method.act_spec(kind="uniform_per_head")
    return c.plan(method.weight_spec(), acts)


def grid_recon_steps(c: GridReconConfig, after_search: Sequence[Step] = ()) -> Sequence[Step]:
    """Min-max calibration (a starting point), the grid search, `after_search`, block
    reconstruction with the config's own engine settings (`c.engine_config()`)."""
    return (Calibrate(),
            Timed("grid_search_s", (GridSearch(c.search_config(), c.exact_padding, c.search_images),)),
            *after_search,
            *optional(bool(c.iters), Reconstruct(c.engine_config())))
