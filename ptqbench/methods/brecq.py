"""BRECQ (Li et al., ICLR 2021) on ViTs, as APHQ-ViT's `configs/{3,4}bit/brecq_qinp.py` ports it: the
pipeline of QDrop's port (ptqbench/methods/qdrop.py) without the drop, every unit trained on the
quantized model's input (`inputs: quantized`, as the original BRECQ's `asym=True`; `inputs: fp` is
the `brecq_baseline.py` variant FIMA-Q's configs run). Steps and differences: docs/methods/qdrop.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptqbench.methods.base import Method, register_method
from ptqbench.methods.grid_recon import GridReconConfig, GridReconRecipe


@dataclass(frozen=True)
class BRECQConfig(GridReconConfig):
    """BRECQ's keys are GridReconConfig's (ptqbench/methods/grid_recon.py); defaults: inputs
    "quantized", drop_prob 1 (no drop)."""

    inputs: str = "quantized"
    drop_prob: float = 1.0


@register_method("brecq", display="BRECQ", cite="li2021brecq", paper="BRECQ")
class BRECQ(GridReconRecipe, Method):
    """BRECQ as APHQ-ViT's ViT port runs it; see the module docstring."""

    Config = BRECQConfig
