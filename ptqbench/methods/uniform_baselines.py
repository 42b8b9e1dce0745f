"""Uniform baselines: `minmax` and `percentile`.

Both use the common protocol (per-channel asymmetric weights, per-tensor asymmetric activations,
uniform quantizers everywhere, including post-softmax) and calibrate in one progressive pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ptqbench.methods.base import Method, ProtocolConfig, Step, register_method
from ptqbench.methods.steps import Calibrate


@dataclass(frozen=True)
class MinMaxConfig(ProtocolConfig):
    """Full observed range for weights and activations."""

    weight_search: str = "minmax"
    act_search: str = "minmax"


@dataclass(frozen=True)
class PercentileConfig(ProtocolConfig):
    """Activations clipped at the `act_percentiles[0]` percentile (and its mirror); weights min-max."""

    weight_search: str = "minmax"
    act_search: str = "percentile"
    act_percentiles: tuple[float, ...] = (0.9999,)


@register_method("minmax", display="Min-Max")
class MinMax(Method):
    """Min-max uniform PTQ."""

    Config = MinMaxConfig

    def steps(self) -> Sequence[Step]:
        return (Calibrate(),)


@register_method("percentile", display="Percentile")
class Percentile(Method):
    """Percentile-clipped uniform PTQ."""

    Config = PercentileConfig

    def steps(self) -> Sequence[Step]:
        return (Calibrate(),)
