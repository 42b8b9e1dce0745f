"""Method registry and the common PTQ protocol every method starts from.

Adding a method = one Python file in this package: a `Method` subclass with a `Config` dataclass,
a `protocol_plan()` (which quantizer each role gets) and `steps()` (what runs on the calibration
images, built from ptqbench.methods.steps), decorated with `@register_method("name", display=...,
cite=..., paper=...)`. The package imports every module in it, so the file registers itself; a
YAML file in conf/method/ is optional and only overrides defaults.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import torch

from ptqbench.errors import ConfigError
from ptqbench.models.adapter import QuantizedModel
from ptqbench.quant import roles
from ptqbench.quant.ranges import RANGE_METHODS, RangeSearch
from ptqbench.quant.spec import QuantizerSpec, QuantPlan

METHODS: dict[str, type["Method"]] = {}

# One step of a method: transforms/calibrates the quantized model in place on the calibration
# images and returns the statistics it adds to the record's `method_stats`.
Step = Callable[[QuantizedModel, torch.Tensor], dict[str, Any]]

_CITE_KEY = re.compile(r"^[a-z][a-z0-9_]*[0-9]{4}[a-z0-9_]*$")


@dataclass(frozen=True)
class MethodInfo:
    """What the report prints about a method, kept with the method itself.

    Attributes:
        display: the name in table rows and plot legends ("RepQ-ViT").
        cite: BibTeX key the LaTeX table cites after the name (authorYEARword); "" for baselines
            that have no paper.
        paper: how the reference CSVs name the method's own paper in their `source` column, so a
            published row from that paper is preferred; None when the method has no paper of its own.
    """

    display: str
    cite: str = ""
    paper: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.display, str) or not self.display.strip():
            raise ValueError(f"MethodInfo.display must be a non-empty name, got {self.display!r}")
        if self.cite and not _CITE_KEY.match(self.cite):
            raise ValueError(f"MethodInfo.cite={self.cite!r} is not an authorYEARword BibTeX key (or '' for none)")
        if self.paper is not None and not self.paper.strip():
            raise ValueError("MethodInfo.paper must be a non-empty source name or None")

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
    """Knobs of the common protocol (docs/methods.md, "Common protocol"), shared by every method's config.

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


SOFTMAX_MODES = ("lut", "log2", "float")
LN_INPUT_KINDS = ("uniform", "ptf")


@dataclass(frozen=True)
class FullQuantConfig:
    """The fully quantized mode (config group `quant`), a switch for every method.

    Attributes:
        full: also quantize what the common protocol leaves in FP: LayerNorm inputs (the residual
            stream), the softmax input, the GELU input and the branch added in each residual add.
        bits: bit-width of those tensors (Linear and matmul inputs keep `bits.a`).
        roles: which of roles.FULL_ROLES to quantize (default all four).
        softmax: "lut": exp from a 2^bits-entry table with `lut_bits` fractional bits, output by
            the method's post-softmax quantizer; "log2": the same, and the output quantized with
            FQ-ViT's log2 quantizer (replacing the method's post-softmax quantizer); "float":
            exact exp of the quantized input.
        lut_bits: fractional bits of the exp table entries.
        ln_input: LayerNorm input quantizer, "uniform" per tensor or FQ-ViT's "ptf".
        ptf_k: PTF's largest factor exponent (factors 1, 2, ..., 2^k).
    """

    full: bool = False
    bits: int = 8
    roles: tuple[str, ...] = roles.FULL_ROLES
    softmax: str = "lut"
    lut_bits: int = 16
    ln_input: str = "uniform"
    ptf_k: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(f"quant.bits={self.bits!r}; use an integer in {MIN_BITS}..{MAX_BITS}")
        object.__setattr__(self, "roles", tuple(self.roles))
        bad = sorted(set(self.roles) - set(roles.FULL_ROLES))
        if bad:
            raise ConfigError(f"quant.roles has unknown role(s) {bad}; choose among {list(roles.FULL_ROLES)}")
        if self.softmax not in SOFTMAX_MODES:
            raise ConfigError(f"quant.softmax={self.softmax!r}; choose one of {SOFTMAX_MODES}")
        if self.ln_input not in LN_INPUT_KINDS:
            raise ConfigError(f"quant.ln_input={self.ln_input!r}; choose one of {LN_INPUT_KINDS}")
        if not 1 <= int(self.lut_bits) <= 24:
            raise ConfigError(f"quant.lut_bits={self.lut_bits!r}; use 1..24")

    @classmethod
    def from_mapping(cls, cfg: Optional[Mapping[str, Any]]) -> "FullQuantConfig":
        cfg = dict(cfg or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ConfigError(f"quant has no option(s) {unknown}; its options are {sorted(fields)}")
        try:
            return cls(**cfg)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad quant option: {e}") from e

    def protocol(self) -> dict[str, Any]:
        """What the record's `protocol` says about this mode."""
        if not self.full:
            return {"full": False}
        return {"full": True, "full_bits": self.bits, "full_roles": list(self.roles), "softmax": self.softmax,
                "lut_bits": self.table_bits, "ln_input": self.ln_input}

    @property
    def table_bits(self) -> Optional[int]:
        """Fractional bits of the softmax's exp table, None when the exp is exact: with
        quant.softmax=float, or when the softmax input is not quantized (`softmax_in` not in
        quant.roles), since the table is indexed by the quantized input."""
        if self.softmax == "float" or roles.SOFTMAX_IN not in self.roles:
            return None
        return self.lut_bits


class Method:
    """A PTQ recipe over the quantization core: a plan and a sequence of steps.

    Subclasses set `Config` (a frozen dataclass deriving from ProtocolConfig), and override
    `protocol_plan()` (which quantizer each role gets) and `steps()` (what `quantize()` runs, in
    order). Behaviour is shared through steps and plan helpers, not by subclassing another method.
    """

    name: ClassVar[str] = ""
    info: ClassVar[MethodInfo]
    Config: ClassVar[type] = ProtocolConfig
    # True for methods that stream calibration data unit by unit through the family's units (QuantizedModel.units)
    # (ERQ, GPTQ): they need a model family that gives units (detectors: the backbone's chain).
    blockwise: ClassVar[bool] = False
    # False: the method refuses quant.full=true with a ConfigError (`fp`, which quantizes nothing)
    supports_full: ClassVar[bool] = True
    # True for methods that differentiate the classifier's logits (APHQ-ViT's perturbation Hessian):
    # tasks without logits (detection) refuse them, naming `logits_fix`
    needs_logits: ClassVar[bool] = False
    logits_fix: ClassVar[str] = "run it with task=classification"

    def __init__(self, config: Any, bits: Bits, quant: Optional[FullQuantConfig] = None) -> None:
        self.config = config
        self.bits = bits
        self.quant = quant or FullQuantConfig()
        if self.quant.full and not self.supports_full:
            raise ConfigError(f"method {self.name!r} does not support the fully quantized mode; use quant.full=false")

    # -- what gets quantized -------------------------------------------------------------
    def weight_spec(self) -> QuantizerSpec:
        c = self.config
        return QuantizerSpec(self.bits.w, per_channel=True, search=RangeSearch(c.weight_search, c.weight_percentiles))

    def act_spec(self, bits: Optional[int] = None, **kw: Any) -> QuantizerSpec:
        c = self.config
        kw.setdefault("search", RangeSearch(c.act_search, c.act_percentiles))
        return QuantizerSpec(bits or self.bits.a, **kw)

    def plan(self) -> Optional[QuantPlan]:
        """What gets quantized: `protocol_plan()`, plus the fully quantized roles when
        quant.full=true. None = nothing quantized."""
        return self.with_full(self.protocol_plan())

    def protocol_plan(self) -> QuantPlan:
        """Which quantizer each role gets (before the fully quantized mode). Methods override this
        to change `common_plan()` per role."""
        return self.common_plan()

    def common_plan(self) -> QuantPlan:
        """The common protocol: per-channel weights, per-tensor activations everywhere a Linear or
        attention matmul reads, 8-bit (configurable) patch-embedding input."""
        acts: dict[str, Optional[QuantizerSpec]] = {r: self.act_spec() for r in roles.ACTIVATION_ROLES}
        pib = self.config.patch_input_bits
        acts[roles.PATCH_IN] = self.act_spec(bits=pib) if pib else None
        return QuantPlan(weight=self.weight_spec(), activations=acts)

    # -- the fully quantized mode ----------------------------------------------------------------
    def full_spec(self, role: str) -> QuantizerSpec:
        """The quantizer of a fully quantized role (quant.full=true): uniform per tensor at
        quant.bits with the method's activation range search; PTF for LayerNorm inputs when
        quant.ln_input=ptf. Methods override this to choose their own."""
        if role == roles.LN_IN and self.quant.ln_input == "ptf":
            return QuantizerSpec(self.quant.bits, kind="ptf", options=(("k", self.quant.ptf_k),))
        return self.act_spec(bits=self.quant.bits)

    def with_full(self, plan: QuantPlan) -> QuantPlan:
        """`plan` plus the fully quantized roles when quant.full=true (unchanged otherwise)."""
        q = self.quant
        if not q.full:
            return plan
        acts = dict(plan.activations)
        for role in roles.FULL_ROLES:
            acts[role] = self.full_spec(role) if role in q.roles else None
        if q.softmax == "log2":
            acts[roles.POST_SOFTMAX] = QuantizerSpec(self.bits.a, kind="log2")
        return dataclasses.replace(plan, activations=acts, softmax_lut_bits=q.table_bits)

    # -- how -------------------------------------------------------------------------------
    def steps(self) -> Sequence[Step]:
        """What `quantize()` runs, in order (ptqbench.methods.steps)."""
        raise NotImplementedError(f"method {self.name!r} declares no steps()")

    def quantize(self, qm: QuantizedModel, calib: torch.Tensor) -> dict[str, Any]:
        """Run `steps()` on `qm` in place with the calibration images; returns their statistics
        for the record, in step order."""
        stats: dict[str, Any] = {}
        for step in self.steps():
            stats.update(step(qm, calib))
        return stats


def register_method(name: str, *, display: str, cite: str = "", paper: Optional[str] = None):
    """Class decorator: make a Method available as `method=<name>`, with what the report prints
    about it (MethodInfo: display name, BibTeX key, the source name of its own paper)."""
    info = MethodInfo(display, cite, paper)

    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice ({METHODS[name].__module__} and {cls.__module__})")
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) decorates a Method subclass, got {cls!r}")
        if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, ProtocolConfig)):
            raise TypeError(f"method {name!r}: Config must be a dataclass deriving from ProtocolConfig")
        cls.name = name
        cls.info = info
        METHODS[name] = cls
        return cls

    return deco


def build_method(method_cfg: Mapping[str, Any], bits: Bits, quant: Optional[Mapping[str, Any]] = None) -> Method:
    """Instantiate the registered method named by `method_cfg['name']` with a validated config;
    `quant` is the fully quantized mode's config group (None: off)."""
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
    return cls(config, bits, FullQuantConfig.from_mapping(quant))
