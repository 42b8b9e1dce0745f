"""The registry of PTQ methods. Importing this package imports every module in it, and each
method module registers itself (`@register_method`), so adding a method is adding one file."""

import importlib
import pkgutil

from ptqbench.methods.base import METHODS, Bits, FullQuantConfig, Method, MethodInfo, ProtocolConfig, build_method, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Bits", "FullQuantConfig", "Method", "MethodInfo", "ProtocolConfig", "build_method",
           "register_method"]
