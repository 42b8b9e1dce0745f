"""`fp`: the unquantized model, for the FP row of every table."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ptqbench.methods.base import Method, register_method
from ptqbench.models.adapter import QuantizedModel
from ptqbench.quant.spec import QuantPlan


@register_method("fp")
class FloatingPoint(Method):
    """No quantization: the run's metrics are the FP baseline of the same model and images."""

    supports_full = False  # nothing is quantized, so quant.full=true would be a mislabelled FP row

    def plan(self) -> Optional[QuantPlan]:
        return None

    def quantize(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        return {}
