"""Declarative quantizer choices: a method says *what* quantizer each role gets, the model
adapter builds them. Keeps methods free of module surgery."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ptqbench.quant.base import Quantizer
from ptqbench.quant.dynamic_focus import DynamicFocusQuantizer
from ptqbench.quant.log_sqrt2 import Log2Quantizer, LogSqrt2Quantizer
from ptqbench.quant.ptf import PTFQuantizer
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.tan import TanQuantizer
from ptqbench.quant.twin_uniform import TwinUniformQuantizer
from ptqbench.quant.two_scale import OutlierTwoScaleQuantizer, ValueTwoScaleQuantizer
from ptqbench.quant.uniform import UniformQuantizer

# kind -> what it is (options it reads from `QuantizerSpec.options`)
QUANTIZER_KINDS = (
    "uniform",       # affine, per tensor or per channel
    "log_sqrt2",     # RepQ-ViT post-softmax
    "log2",          # FQ-ViT softmax output (no parameter)
    "v2sf",          # TSPTQ-ViT value-aware two scales (k_max)
    "o2sf",          # TSPTQ-ViT outlier-aware two scales (ratios, k_max)
    "twin_softmax",  # PTQ4ViT twin uniform, post-softmax (m_max)
    "twin_gelu",     # PTQ4ViT twin uniform, post-GELU
    "ptf",           # FQ-ViT power-of-two factor, LayerNorm input (k)
    "tan",           # DopQ-ViT TanQ, post-softmax (thetas)
    "dynamic_focus", # AIQViT DFQ, post-softmax (upper_percentiles)
)


@dataclass(frozen=True)
class QuantizerSpec:
    """One quantizer's recipe.

    Attributes:
        bits: code width.
        kind: one of QUANTIZER_KINDS.
        symmetric: signed codes with zero point 0 (uniform only).
        per_channel: one scale per output channel (weights) or per feature (activations).
        search: clipping-range search.
        options: extra constructor arguments of the kind, as (name, value) pairs.
    """

    bits: int
    kind: str = "uniform"
    symmetric: bool = False
    per_channel: bool = False
    search: RangeSearch = field(default_factory=RangeSearch)
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in QUANTIZER_KINDS:
            raise ValueError(f"unknown quantizer kind {self.kind!r}; choose one of {QUANTIZER_KINDS}")

    def build(self, role: str, channel_axis: int) -> Quantizer:
        """Instantiate; `channel_axis` is used when `per_channel` (0 for weights, -1 for activations)."""
        opts = dict(self.options)
        if self.kind == "log_sqrt2":
            return LogSqrt2Quantizer(self.bits, role, self.search)
        if self.kind == "tan":
            return TanQuantizer(self.bits, role, **opts)
        if self.kind == "dynamic_focus":
            return DynamicFocusQuantizer(self.bits, role, **opts)
        if self.kind == "log2":
            return Log2Quantizer(self.bits, role)
        if self.kind == "v2sf":
            return ValueTwoScaleQuantizer(self.bits, role, search=self.search, **opts)
        if self.kind == "o2sf":
            return OutlierTwoScaleQuantizer(self.bits, role, search=self.search, **opts)
        if self.kind in ("twin_softmax", "twin_gelu"):
            return TwinUniformQuantizer(self.bits, role, self.kind[5:], search=self.search, **opts)
        if self.kind == "ptf":
            return PTFQuantizer(self.bits, role, **opts)
        return UniformQuantizer(
            self.bits, role, self.symmetric, channel_axis if self.per_channel else None, self.search
        )


@dataclass(frozen=True)
class QuantPlan:
    """What a method quantizes: a spec per activation role (None = stays FP) and for weights.

    Attributes:
        weight: weight quantizer of every Linear and Conv2d (None = FP weights).
        activations: role -> spec; the fully quantized roles (roles.FULL_ROLES) make the adapter
            patch LayerNorm inputs, the softmax, GELU and the residual adds.
        softmax_lut_bits: fully quantized mode: the softmax takes exp from a table indexed by the
            quantized input, entries rounded to this many fractional bits (None = float exp).
    """

    weight: Optional[QuantizerSpec]
    activations: dict[str, Optional[QuantizerSpec]]
    softmax_lut_bits: Optional[int] = None

    def for_role(self, role: str) -> Optional[QuantizerSpec]:
        return self.activations.get(role)
