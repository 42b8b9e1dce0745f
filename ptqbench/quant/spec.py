"""Declarative quantizer choices: a method says *what* quantizer each role gets, the model
adapter builds them. Keeps methods free of module surgery."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ptqbench.errors import ConfigError
from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import kind_entry
from ptqbench.quant.ranges import RangeSearch


@dataclass(frozen=True)
class QuantizerSpec:
    """One quantizer's recipe, checked when it is made (before any model work).

    Attributes:
        bits: code width.
        kind: a registered quantizer kind (`ptqbench.quant.kinds.quantizer_kinds()`).
        symmetric: signed codes with zero point 0 (kinds with a layout: uniform).
        per_channel: one scale per output channel (weights) or per feature (activations); same kinds.
        search: clipping-range search (kinds that search a range).
        options: the kind's options: an instance of its options dataclass, a mapping or (name, value)
            pairs; stored as the dataclass instance.
    """

    bits: int
    kind: str = "uniform"
    symmetric: bool = False
    per_channel: bool = False
    search: RangeSearch = field(default_factory=RangeSearch)
    options: Any = ()

    def __post_init__(self) -> None:
        entry = kind_entry(self.kind)
        object.__setattr__(self, "options", entry.make_options(self.options))
        if not entry.layout and (self.symmetric or self.per_channel):
            raise ConfigError(f"quantizer kind {self.kind!r} has no symmetric/per_channel layout; "
                              "those apply to kind 'uniform' only")
        try:  # the constructor is the one home of each kind's value checks
            self.build("weight", 0)
        except ValueError as e:
            raise ConfigError(f"quantizer kind {self.kind!r}: {e}") from e

    def build(self, role: str, channel_axis: int) -> Quantizer:
        """Instantiate; `channel_axis` is used when `per_channel` (0 for weights, -1 for activations)."""
        return kind_entry(self.kind).build(self, role, channel_axis)


ATTENTION_SCALES = ("q", "product")


@dataclass(frozen=True)
class QuantPlan:
    """What a method quantizes: a spec per activation role (None = stays FP) and for weights.

    Attributes:
        weight: weight quantizer of every Linear and Conv2d (None = FP weights).
        activations: role -> spec; the fully quantized roles (roles.FULL_ROLES) make the adapter
            patch LayerNorm inputs, the softmax, GELU and the residual adds.
        softmax_lut_bits: fully quantized mode: the softmax takes exp from a table indexed by the
            quantized input, entries rounded to this many fractional bits (None = float exp).
        attention_scale: where 1/sqrt(d) multiplies: "q" (before q's quantizer, as timm's FP path
            does and on 3x fewer elements) or "product" (after the quantized q @ k^T, as the
            RepQ-ViT code family does). Equal in exact arithmetic; the last float bit differs,
            and at 3-4 bits that moves values across rounding ties (docs/anchors/ias).
    """

    weight: Optional[QuantizerSpec]
    activations: dict[str, Optional[QuantizerSpec]]
    softmax_lut_bits: Optional[int] = None
    attention_scale: str = "q"

    def __post_init__(self) -> None:
        if self.attention_scale not in ATTENTION_SCALES:
            raise ConfigError(f"attention_scale={self.attention_scale!r}; choose one of {ATTENTION_SCALES}")

    def for_role(self, role: str) -> Optional[QuantizerSpec]:
        return self.activations.get(role)
