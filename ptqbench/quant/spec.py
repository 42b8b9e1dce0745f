"""Declarative quantizer choices: a method says *what* quantizer each role gets, the model
adapter builds them. Keeps methods free of module surgery."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ptqbench.quant.base import Quantizer
from ptqbench.quant.log_sqrt2 import LogSqrt2Quantizer
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.uniform import UniformQuantizer

QUANTIZER_KINDS = ("uniform", "log_sqrt2")


@dataclass(frozen=True)
class QuantizerSpec:
    """One quantizer's recipe.

    Attributes:
        bits: code width.
        kind: "uniform" or "log_sqrt2".
        symmetric: signed codes with zero point 0 (uniform only).
        per_channel: one scale per output channel (weights) or per feature (activations).
        search: clipping-range search.
    """

    bits: int
    kind: str = "uniform"
    symmetric: bool = False
    per_channel: bool = False
    search: RangeSearch = field(default_factory=RangeSearch)

    def __post_init__(self) -> None:
        if self.kind not in QUANTIZER_KINDS:
            raise ValueError(f"unknown quantizer kind {self.kind!r}; choose one of {QUANTIZER_KINDS}")

    def build(self, role: str, channel_axis: int) -> Quantizer:
        """Instantiate; `channel_axis` is used when `per_channel` (0 for weights, -1 for activations)."""
        if self.kind == "log_sqrt2":
            return LogSqrt2Quantizer(self.bits, role, self.search)
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
