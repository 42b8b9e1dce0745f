"""The one quantization core: quantizers (a registry of kinds, `kinds.py`), quantized modules,
calibration. Model-level algorithms live in ptqbench.algorithms, which builds on this package
(never the other way). Importing this package imports every module in it, so every quantizer
kind has registered itself (`@register_kind`) before a spec is built: a new kind is one file."""

import importlib
import pkgutil

from ptqbench.quant.base import Quantizer, round_ste
from ptqbench.quant.calibration import calibrate, quant_disabled, quantizers, set_quant_enabled
from ptqbench.quant.kinds import quantizer_kinds, register_kind
from ptqbench.quant.log_sqrt2 import LogSqrt2Quantizer
from ptqbench.quant.modules import QuantConv2d, QuantLinear, QuantMatMul
from ptqbench.quant.ranges import RangeSearch
from ptqbench.quant.spec import QuantizerSpec, QuantPlan
from ptqbench.quant.uniform import UniformQuantizer, fake_quant, params_from_range, qrange

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Quantizer", "round_ste", "calibrate", "quant_disabled", "quantizers", "set_quant_enabled",
    "quantizer_kinds", "register_kind",
    "LogSqrt2Quantizer", "QuantConv2d", "QuantLinear", "QuantMatMul", "RangeSearch",
    "QuantizerSpec", "QuantPlan", "UniformQuantizer",
    "fake_quant", "params_from_range", "qrange",
]
