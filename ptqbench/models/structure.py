"""What a model family tells the algorithms about a model's structure: its units (the steps of
the forward pass that block-wise methods walk) and its LayerNorm -> Linear reparameterization pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ptqbench.quant.modules import QuantLinear


EMBED, BLOCK, DOWNSAMPLE, HEAD, OTHER = "embed", "block", "downsample", "head", "other"


@dataclass
class Unit:
    """One step of the forward pass.

    Attributes:
        name: dotted name of the unit's main module ("blocks.3", "layers.1.downsample", "head").
        forward: maps the previous unit's output to this unit's output.
        module: the module(s) whose parameters the unit uses (hooks and layer lookup go here).
        kind: what the step is (EMBED, BLOCK, DOWNSAMPLE, HEAD or OTHER): methods that treat transformer
            blocks specially (ERQ's dual-uniform qkv/fc1) select units by kind, not by attributes.
        inner_output: a module inside the unit whose output is the unit's output less the rows the
            unit prepends (ViT's patch embedding, before the class token and position embedding):
            where the released APHQ-ViT code takes the embedding's perturbation Hessian. None: the
            unit's output is its own.
    """

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module
    kind: str = OTHER
    inner_output: Optional[nn.Module] = None


@dataclass
class ReparamPair:
    """A LayerNorm whose output feeds exactly one quantized Linear (and nothing else quantized).

    `pad_site`: the window attention between them that zero-pads the norm's output to whole
    windows (Swin's norm1 -> qkv), else None. It has an `input_shift` attribute (None or a
    per-channel tensor added to its input after the padding)."""

    name: str
    norm: nn.LayerNorm
    linear: QuantLinear
    pad_site: Optional[nn.Module] = None
