"""QDrop (Wei et al., ICLR 2022) on ViTs, as APHQ-ViT's `configs/{3,4}bit/qdrop_baseline.py` ports it
(GoatWu/APHQ-ViT `test_quant.py --calibrate --optimize`): the AdaLog / APHQ-ViT quantizer set and
grid-search calibration (ptqbench.algorithms.grid_search), then block reconstruction of the patch
embedding, every block and the head: AdaRound on the weights and learned activation scales, each
unit's input and every activation quantizer's output dropped to FP per element with probability
1 - drop_prob. Steps, sources and differences: docs/methods/qdrop.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptqbench.methods.base import Method, register_method
from ptqbench.methods.grid_recon import GridReconConfig, GridReconRecipe


@dataclass(frozen=True)
class QDropConfig(GridReconConfig):
    """QDrop's keys are GridReconConfig's (ptqbench/methods/grid_recon.py); defaults: inputs "qdrop",
    drop_prob 0.5."""

    inputs: str = "qdrop"
    drop_prob: float = 0.5


@register_method("qdrop", display="QDrop", cite="wei2022qdrop", paper="QDrop")
class QDrop(GridReconRecipe, Method):
    """QDrop as APHQ-ViT's ViT port runs it; see the module docstring."""

    Config = QDropConfig
