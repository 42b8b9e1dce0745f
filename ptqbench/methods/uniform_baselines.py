"""Uniform baselines: `minmax` and `percentile`.

Both use the common protocol (per-channel asymmetric weights, per-tensor asymmetric activations,
uniform quantizers everywhere, including post-softmax) and calibrate in one progressive pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ptqbench.methods.base import Method, ProtocolConfig, register_method
from ptqbench.models.adapter import QuantizedModel
from ptqbench.quant.calibration import calibrate


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


class _CalibrateOnly(Method):
    def quantize(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        return {"calibrated_quantizers": calibrate(qm.model, calib)}


@register_method("minmax")
class MinMax(_CalibrateOnly):
    """Min-max uniform PTQ."""

    Config = MinMaxConfig


@register_method("percentile")
class Percentile(_CalibrateOnly):
    """Percentile-clipped uniform PTQ."""

    Config = PercentileConfig
