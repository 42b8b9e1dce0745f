"""`fp`: the unquantized model, for the FP row of every table."""

from __future__ import annotations

from typing import Optional, Sequence

from ptqbench.methods.base import Method, Step, register_method
from ptqbench.quant.spec import QuantPlan


@register_method("fp", display="Full Prec.")
class FloatingPoint(Method):
    """No quantization: the run's metrics are the FP baseline of the same model and images."""

    supports_full = False  # nothing is quantized, so quant.full=true would be a mislabelled FP row

    def plan(self) -> Optional[QuantPlan]:
        return None

    def steps(self) -> Sequence[Step]:
        return ()
