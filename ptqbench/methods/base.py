"""Method registry and the common PTQ protocol every method starts from.

Adding a method = one Python file here (a `Method` subclass with a `Config` dataclass, decorated
with `@register_method("name")`) + one YAML file in conf/method/ listing its knobs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch

from ptqbench.errors import ConfigError
from ptqbench.models.adapter import QuantizedModel
from ptqbench.quant import roles
from ptqbench.quant.ranges import RANGE_METHODS, RangeSearch
from ptqbench.quant.spec import QuantizerSpec, QuantPlan

METHODS: dict[str, type["Method"]] = {}

MIN_BITS, MAX_BITS = 2, 16


@dataclass(frozen=True)
class Bits:
    """Weight and activation bit-widths of a run (W/A)."""

    w: int
    a: int

    def __post_init__(self) -> None:
        for what, v in (("bits.w", self.w), ("bits.a", self.a)):
            if not isinstance(v, int) or isinstance(v, bool) or not MIN_BITS <= v <= MAX_BITS:
                raise ConfigError(
                    f"{what}={v!r} is not a bit-width ptqbench supports; use an integer in "
                    f"{MIN_BITS}..{MAX_BITS} (bits=w4a4 or bits.w=4 bits.a=4)"
                )

    @property
    def name(self) -> str:
        return f"w{self.w}a{self.a}"


@dataclass(frozen=True)
class ProtocolConfig:
    """Knobs of the common protocol (METHODS.md), shared by every method's config.

    Attributes:
        patch_input_bits: bits for the image input of the patch embedding; RepQ-ViT uses 8,
            ERQ leaves it FP (null).
        weight_search / weight_percentiles: clipping search for per-channel weight ranges.
        act_search / act_percentiles: clipping search for per-tensor activation ranges.
    """

    patch_input_bits: Optional[int] = 8
    weight_search: str = "mse"
    weight_percentiles: tuple[float, ...] = (0.999, 0.9999, 0.99999)
    act_search: str = "mse"
    act_percentiles: tuple[float, ...] = (0.999, 0.9999, 0.99999)

    def __post_init__(self) -> None:
        for key in ("weight_search", "act_search"):
            if getattr(self, key) not in RANGE_METHODS:
                raise ConfigError(f"method.{key}={getattr(self, key)!r}; choose one of {RANGE_METHODS}")
        for key in ("weight_percentiles", "act_percentiles"):
            object.__setattr__(self, key, tuple(float(p) for p in getattr(self, key)))


class Method:
    """A PTQ recipe over the quantization core.

    Subclasses set `Config` (a frozen dataclass deriving from ProtocolConfig), and override
    `plan()` (which quantizer each role gets) and/or `quantize()` (calibration and any weight or
    model transformation).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = ProtocolConfig
    # True for methods that stream calibration data unit by unit through models.units.model_units
    # (ERQ, GPTQ); tasks whose models have no unit list (detection) refuse them up front.
    blockwise: ClassVar[bool] = False

    def __init__(self, config: Any, bits: Bits) -> None:
        self.config = config
        self.bits = bits

    # -- what gets quantized -------------------------------------------------------------
    def weight_spec(self) -> QuantizerSpec:
        c = self.config
        return QuantizerSpec(self.bits.w, per_channel=True, search=RangeSearch(c.weight_search, c.weight_percentiles))

    def act_spec(self, bits: Optional[int] = None, **kw: Any) -> QuantizerSpec:
        c = self.config
        kw.setdefault("search", RangeSearch(c.act_search, c.act_percentiles))
        return QuantizerSpec(bits or self.bits.a, **kw)

    def plan(self) -> Optional[QuantPlan]:
        """The common protocol: per-channel weights, per-tensor activations everywhere a Linear or
        attention matmul reads, 8-bit (configurable) patch-embedding input. None = nothing quantized."""
        acts: dict[str, Optional[QuantizerSpec]] = {r: self.act_spec() for r in roles.ACTIVATION_ROLES}
        pib = self.config.patch_input_bits
        acts[roles.PATCH_IN] = self.act_spec(bits=pib) if pib else None
        return QuantPlan(weight=self.weight_spec(), activations=acts)

    # -- how -------------------------------------------------------------------------------
    def quantize(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        """Calibrate/transform `qm` in place on the calibration images; returns stats for the record."""
        raise NotImplementedError


def register_method(name: str):
    """Class decorator: make a Method available as `method=<name>`."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def build_method(method_cfg: Mapping[str, Any], bits: Bits) -> Method:
    """Instantiate the registered method named by `method_cfg['name']` with a validated config."""
    cfg = dict(method_cfg)
    name = cfg.pop("name", None)
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; registered methods: {sorted(METHODS)} (method=NAME)")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {unknown}; its options are {sorted(fields)}")
    try:
        config = cls.Config(**cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad option for method {name!r}: {e}") from e
    return cls(config, bits)
