"""APHQ-ViT (Wu et al., CVPR 2025), as its released code runs it (GoatWu/APHQ-ViT `test_quant.py
--reconstruct-mlp --calibrate --optimize` with `configs/{3,4}bit/best.py`):

1. MLP reconstruction: every block's GELU becomes a ReLU and fc1/fc2 are retrained against the FP
   GELU MLP, weighted by the average perturbation Hessian (ptqbench.algorithms.mlp_recon);
2. the AdaLog / APHQ-ViT grid-search calibration of QDrop's port, on the ReLU model
   (ptqbench.algorithms.grid_search);
3. block reconstruction as in QDrop's port (AdaRound, learned activation scales, drop 0.5), its
   squared error weighted by the average perturbation Hessian of each unit's output, targets and
   FP inputs from the FP GELU model (ptqbench.algorithms.perturbation_hessian).

Steps, sources and differences: docs/methods/aphq.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

from ptqbench.algorithms.mlp_recon import MLP_LOSSES, MLPReconConfig
from ptqbench.algorithms.reconstruction import ReconConfig
from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.grid_recon import GridReconConfig, GridReconRecipe, grid_recon_steps
from ptqbench.methods.steps import ReluMLPReconstruct, WithFPTeacher, optional

# the released configs/<W>bit/best.py `pct` (the MLP stage's clip percentile); other widths: 0.98
RELEASED_MLP_PCT = {2: 0.98, 3: 0.99, 4: 0.98}
TEACHER_ATTENTION = ("timm", "unfused")


@dataclass(frozen=True)
class APHQConfig(GridReconConfig):
    """APHQ-ViT's keys: GridReconConfig's (ptqbench/methods/grid_recon.py), plus
    relu_mlp: run the MLP stage (false: QDrop's port with the Hessian-weighted loss only).
    mlp_iters / mlp_batch_size: the MLP stage's steps and batch per block (null: `iters`,
        `batch_size`; the release uses one budget for both).
    mlp_lr: Adam on fc1/fc2 (4e-5, cosine); mlp_pct: the clip percentile (null: the released
        value for the weight width, RELEASED_MLP_PCT); mlp_quant_weight: weight of the clipped
        branch (2.0); mlp_loss: "hessian" (released `recon_metric`) or "mse"; mlp_loss_divisor:
        the MLP loss divided by it (the release's 10).
    hessian_weighted: weight the block reconstruction's squared error by the perturbation
        Hessian (released `optim_metric: hessian_perturb`; false: `mse`, QDrop's port).
    hessian_mean: one weight tensor averaged over the images (`use_mean_hessian`, true).
    hessian_temperature / hessian_eps / hessian_chunk: 20, 1e-6, 32 (the release's `temp`, the
        perturbation, `optim_batch_size`).
    hessian_site: "inner" (the release: the embedding's Hessian at the patch embedding's output,
        before the class token and position embedding) or "output" (at the unit's output);
        ReconConfig.hessian_site.
    teacher_attention: how the FP teacher (targets, FP inputs, both Hessians) computes attention:
        "timm", as the plain timm model does (fused scaled_dot_product_attention for ViT/DeiT), as
        the release's `full_model` does; "unfused", ptqbench's products. The same function, but the
        Hessian is a difference of two gradients at +-1e-6 in float32, so it follows the float
        rounding: DeiT-T's block-0 Hessian differs by 27 % (relative L2) between the two
        (docs/methods/aphq.md).
    """

    relu_mlp: bool = True
    mlp_iters: Optional[int] = None
    mlp_batch_size: Optional[int] = None
    mlp_lr: float = 4e-5
    mlp_pct: Optional[float] = None
    mlp_quant_weight: float = 2.0
    mlp_loss: str = "hessian"
    mlp_loss_divisor: float = 10.0
    hessian_weighted: bool = True
    hessian_mean: bool = True
    hessian_temperature: float = 20.0
    hessian_eps: float = 1e-6
    hessian_chunk: int = 32
    hessian_site: str = "inner"
    teacher_attention: str = "timm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_attention not in TEACHER_ATTENTION:
            raise ValueError(f"teacher_attention={self.teacher_attention!r}; choose one of {TEACHER_ATTENTION}")
        if self.mlp_loss not in MLP_LOSSES:
            raise ValueError(f"mlp_loss={self.mlp_loss!r}; choose one of {MLP_LOSSES}")
        for key in ("mlp_iters", "mlp_batch_size"):
            v = getattr(self, key)
            if v is not None and v < (0 if key == "mlp_iters" else 1):
                raise ValueError(f"{key} must be {'>= 0' if key == 'mlp_iters' else '>= 1'} or null, got {v}")
        self.mlp_config(4)  # validates the rest
        self.engine_config()

    def mlp_config(self, weight_bits: int) -> MLPReconConfig:
        pct = self.mlp_pct if self.mlp_pct is not None else RELEASED_MLP_PCT.get(weight_bits, 0.98)
        return MLPReconConfig(
            iters=(self.iters or 0) if self.mlp_iters is None else self.mlp_iters,
            batch_size=self.batch_size if self.mlp_batch_size is None else self.mlp_batch_size,
            lr=self.mlp_lr, pct=pct, quant_weight=self.mlp_quant_weight, loss=self.mlp_loss,
            loss_divisor=self.mlp_loss_divisor,
            temperature=self.hessian_temperature, eps=self.hessian_eps, hessian_chunk=self.hessian_chunk,
            seed=self.recon_seed, progress=self.progress)

    def engine_config(self) -> ReconConfig:
        base = super().engine_config()
        if not self.hessian_weighted:
            return base
        # the released LossFunction: ((pred - tgt)^2 * |H|).mean(), then x 2 / its first value
        return dataclasses.replace(
            base, loss_reduction="mean", loss_weights="perturbation_hessian", hessian_mean=self.hessian_mean,
            hessian_temperature=self.hessian_temperature, hessian_eps=self.hessian_eps,
            hessian_chunk=self.hessian_chunk, hessian_site=self.hessian_site)


@register_method("aphq", display="APHQ-ViT", cite="wu2025aphqvit", paper="APHQ-ViT")
class APHQ(GridReconRecipe, Method):
    """APHQ-ViT as released; see the module docstring."""

    Config = APHQConfig
    needs_logits = True  # the perturbation Hessian differentiates the classifier's KL loss

    def steps(self) -> Sequence[Step]:
        c: APHQConfig = self.config
        mlp = optional(c.relu_mlp, ReluMLPReconstruct(c.mlp_config(self.bits.w)))
        return (WithFPTeacher((*mlp, *grid_recon_steps(c)), timm_attention=c.teacher_attention == "timm"),)
