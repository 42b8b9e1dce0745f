"""The registry of PTQ methods. Importing this package registers every built-in method."""

from ptqbench.methods import aiq, dopq, erq, fp, gptq, ptq4vit, repq, tsptq, uniform_baselines  # noqa: F401  (registration)
from ptqbench.methods.base import METHODS, Bits, FullQuantConfig, Method, ProtocolConfig, build_method, register_method

__all__ = ["METHODS", "Bits", "FullQuantConfig", "Method", "ProtocolConfig", "build_method", "register_method"]
