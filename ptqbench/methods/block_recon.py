"""Knobs and glue shared by methods that finish with block reconstruction (DopQ-ViT, AIQViT).

The engine itself is `ptqbench.algorithms.reconstruction`; this module maps a method's YAML knobs onto
its `ReconConfig`, with the papers' iteration defaults (I&S-ViT's protocol, which DopQ-ViT and
AIQViT follow: 1000 iterations per block at W3A3/W4A4, 200 at W6A6, batch 64, 1024 images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ptqbench.methods.base import Bits
from ptqbench.methods.repq import RepQConfig
from ptqbench.algorithms.reconstruction import LOSSES, ReconConfig, reconstruct

WEIGHT_LEARNING = ("rounding", "scale", "none")
LOW_BIT_ITERS, HIGH_BIT_ITERS = 1000, 200


@dataclass(frozen=True)
class BlockReconConfig(RepQConfig):
    """Attributes (besides RepQ-ViT's activation knobs):
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
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_learning not in WEIGHT_LEARNING:
            raise ValueError(f"weight_learning={self.weight_learning!r}; choose one of {WEIGHT_LEARNING}")
        if self.recon_loss not in LOSSES:
            raise ValueError(f"recon_loss={self.recon_loss!r}; choose one of {LOSSES}")
        if self.iters is not None and self.iters < 0:
            raise ValueError(f"iters must be >= 0 or null, got {self.iters}")

    def engine_config(self, bits: Bits, learn: tuple[str, ...] = (), **extra: Any) -> ReconConfig:
        """The engine's config: the common knobs plus the method's own `learn` kinds and options."""
        iters = self.iters if self.iters is not None else (LOW_BIT_ITERS if min(bits.w, bits.a) <= 4 else HIGH_BIT_ITERS)
        kinds = (("act_scale",) if self.learn_act_scale else ()) + {
            "rounding": ("weight_rounding",), "scale": ("weight_scale",), "none": ()}[self.weight_learning] + learn
        return ReconConfig(
            iters=iters, batch_size=self.batch_size, learn=kinds, lr_act_scale=self.lr_act_scale,
            lr_weight_scale=self.lr_weight_scale, lr_rounding=self.lr_rounding, warmup=self.warmup,
            round_weight=self.round_weight, fp_input_prob=self.fp_input_prob, loss=self.recon_loss,
            units=self.recon_units, seed=self.recon_seed, progress=self.progress, **extra,
        )


def run_reconstruction(model: torch.nn.Module, calib: torch.Tensor, cfg: ReconConfig) -> dict[str, Any]:
    """Reconstruct and return record statistics (per-unit details trimmed to losses and seconds)."""
    stats = reconstruct(model, calib, cfg)
    stats["recon_iters"] = cfg.iters
    stats["recon_batch_size"] = min(cfg.batch_size, calib.shape[0])
    stats["recon_learn"] = list(cfg.learn)
    return stats
