"""FIMA-Q (Wu et al., CVPR 2025), as its released code runs it (ShiheWang/FIMA-Q @ 64c4b00,
`test_quant.py --calibrate --optimize --optim-metric fisher_dplr` with `configs/{3,4}bit/best.py`):

1. the AdaLog / APHQ-ViT grid-search calibration (the same code as APHQ-ViT's; ptqbench's
   `GridSearch`, as `method=qdrop`);
2. token-wise activation scales: each searched activation scale copied once per token
   (ptqbench.algorithms.token_scales);
3. block reconstruction as in QDrop's port (AdaRound, learned activation scales, QDrop 0.5, KL for
   the head), its loss FIMA-Q's diagonal plus low-rank Fisher approximation, refreshed k = 5 times
   per unit (ptqbench.algorithms.fisher_dplr).

Steps, sources and differences: docs/methods/fimaq.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

from ptqbench.algorithms.fisher_dplr import FISHER_SCHEDULES
from ptqbench.algorithms.reconstruction import ReconConfig
from ptqbench.methods.base import Method, Step, register_method
from ptqbench.methods.grid_recon import GridReconConfig, GridReconRecipe, grid_recon_steps
from ptqbench.methods.steps import TokenWiseScales, optional


@dataclass(frozen=True)
class FIMAQConfig(GridReconConfig):
    """FIMA-Q's keys: GridReconConfig's (ptqbench/methods/grid_recon.py) with the released
    `best.py` defaults, plus
    token_wise: one activation scale per token after the search (`token_channel_wise`, true).
    fisher_k: Fisher refreshes per unit (`k`, 5; iters must be >= k).
    fisher_p1 / fisher_p2: weights of the low-rank and diagonal terms (`p1`, `p2`: 1, 1).
    fisher_schedule: "spread" (every floor(iters / k) steps, `dis_mode='q'`) or "first" (`'qf'`).
    fisher_temperature: the KL temperature of the refresh (`temp`, 20); fisher_chunk: images per
        refresh batch (`optim_batch_size`, 32).
    loss_normalize is null: the DPLR loss divides each term by its value at the last refresh.
    """

    loss_normalize: Optional[float] = None
    token_wise: bool = True
    fisher_k: int = 5
    fisher_p1: float = 1.0
    fisher_p2: float = 1.0
    fisher_schedule: str = "spread"
    fisher_temperature: float = 20.0
    fisher_chunk: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fisher_schedule not in FISHER_SCHEDULES:
            raise ValueError(f"fisher_schedule={self.fisher_schedule!r}; choose one of {FISHER_SCHEDULES}")
        if self.fisher_k < 1 or self.fisher_chunk < 1:
            raise ValueError("fisher_k and fisher_chunk must be >= 1")
        if self.iters and self.iters < self.fisher_k:
            raise ValueError(f"iters={self.iters} < fisher_k={self.fisher_k}: the release refreshes every "
                             "floor(iters / k) steps; use iters >= fisher_k")
        self.engine_config()

    def engine_config(self) -> ReconConfig:
        return dataclasses.replace(
            super().engine_config(), loss_weights="fisher_dplr", fisher_k=self.fisher_k, fisher_p1=self.fisher_p1,
            fisher_p2=self.fisher_p2, fisher_schedule=self.fisher_schedule,
            hessian_temperature=self.fisher_temperature, hessian_chunk=self.fisher_chunk)


@register_method("fimaq", display="FIMA-Q", cite="wu2025fimaq", paper="FIMA-Q")
class FIMAQ(GridReconRecipe, Method):
    """FIMA-Q as released; see the module docstring."""

    Config = FIMAQConfig
    needs_logits = True  # the Fisher refresh differentiates the classifier's KL loss

    def steps(self) -> Sequence[Step]:
        return grid_recon_steps(self.config, after_search=optional(self.config.token_wise, TokenWiseScales()))
