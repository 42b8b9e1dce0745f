"""Declarative quantizer choices: a method says *what* quantizer each role gets, the model
adapter builds them. Keeps methods free of module surgery."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ptqbench.quant.base import Quantizer
from ptqbench.quant.dynamic_focus import DynamicFocusQuantizer
from ptqbench.quant.log_sqrt2 import LogSqrt2Quantizer
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.tan import TanQuantizer
from ptqbench.quant.uniform import UniformQuantizer

QUANTIZER_KINDS = ("uniform", "log_sqrt2", "tan", "dynamic_focus")


@dataclass(frozen=True)
class QuantizerSpec:
    """One quantizer's recipe.

    Attributes:
        bits: code width.
        kind: "uniform", "log_sqrt2", "tan" (DopQ-ViT's TanQ) or "dynamic_focus" (AIQViT's DFQ).
        symmetric: signed codes with zero point 0 (uniform only).
        per_channel: one scale per output channel (weights) or per feature (activations).
        search: clipping-range search.
        options: extra constructor arguments of the quantizer kind, as (name, value) pairs
            (TanQ's `thetas`, DFQ's `upper_percentiles`).
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
        if self.kind == "log_sqrt2":
            return LogSqrt2Quantizer(self.bits, role, self.search)
        if self.kind == "tan":
            return TanQuantizer(self.bits, role, **dict(self.options))
        if self.kind == "dynamic_focus":
            return DynamicFocusQuantizer(self.bits, role, **dict(self.options))
        return UniformQuantizer(
            self.bits, role, self.symmetric, channel_axis if self.per_channel else None, self.search
        )


@dataclass(frozen=True)
class QuantPlan:
    """What a method quantizes: a spec per activation role (None = stays FP) and for weights."""

    weight: Optional[QuantizerSpec]
    activations: dict[str, Optional[QuantizerSpec]]

    def for_role(self, role: str) -> Optional[QuantizerSpec]:
        return self.activations.get(role)
