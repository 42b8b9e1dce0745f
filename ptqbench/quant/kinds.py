"""The registry of quantizer kinds: a kind's name, its typed options and how a `QuantizerSpec` builds it.

A quantizer module registers its class next to its definition:

    @dataclass(frozen=True)
    class TanOptions:
        thetas: tuple[float, ...] = DEFAULT_THETAS

    @register_kind("tan", options=TanOptions)
    class TanQuantizer(Quantizer): ...

so a new kind is one file in `ptqbench/quant/`: importing the package (which any import of one of
its modules does first) imports every module of it, which runs their `register_kind` decorators.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from ptqbench.errors import ConfigError

if TYPE_CHECKING:
    from ptqbench.quant.base import Quantizer


@dataclass(frozen=True)
class NoOptions:
    """The options of a kind that takes none."""


@dataclass(frozen=True)
class KindEntry:
    """One registered kind.

    Attributes:
        name: what `QuantizerSpec.kind` says.
        cls: the quantizer class.
        options: the kind's options dataclass (frozen; its fields are the constructor's keyword arguments).
        search: the constructor takes the spec's `search` (clipping-range search).
        layout: the kind honours `symmetric` and `per_channel` (only the affine uniform grid does).
        preset: constructor arguments fixed by the kind (e.g. the twin-uniform mode).
    """

    name: str
    cls: type
    options: type = NoOptions
    search: bool = False
    layout: bool = False
    preset: Mapping[str, Any] = field(default_factory=dict)

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))

    def make_options(self, given: Any) -> Any:
        """`given` (None, an instance of `options`, a mapping or (name, value) pairs) as an instance of
        `options`; sequences become tuples so the spec stays hashable."""
        if isinstance(given, self.options):
            return given
        if given is None:
            given = {}
        if dataclasses.is_dataclass(given) and not isinstance(given, type):
            raise ConfigError(f"quantizer kind {self.name!r} takes {self.options.__name__}, "
                              f"got {type(given).__name__}")
        items = dict(given.items() if isinstance(given, Mapping) else given)
        valid = self.option_names()
        bad = sorted(set(items) - set(valid))
        if bad:
            raise ConfigError(f"quantizer kind {self.name!r} has no option(s) {bad}; "
                              f"valid options: {list(valid) or 'none'}")
        items = {k: (tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v) for k, v in items.items()}
        return self.options(**items)

    def build(self, spec: Any, role: str, channel_axis: int) -> Quantizer:
        """The quantizer `spec` (a ptqbench.quant.spec.QuantizerSpec, which builds through this
        registry, hence not imported here) describes, for `role`."""
        kwargs: dict[str, Any] = {**self.preset, **{f.name: getattr(spec.options, f.name)
                                                    for f in dataclasses.fields(self.options)}}
        if self.search:
            kwargs["search"] = spec.search
        if self.layout:
            kwargs.update(symmetric=spec.symmetric, channel_axis=channel_axis if spec.per_channel else None)
        return self.cls(spec.bits, role, **kwargs)


_KINDS: dict[str, KindEntry] = {}


def register_kind(name: str, options: type = NoOptions, *, search: bool = False, layout: bool = False,
                  preset: Optional[Mapping[str, Any]] = None) -> Callable[[type], type]:
    """Class decorator: `QuantizerSpec(bits, kind=name, options=...)` builds
    `cls(bits, role, **preset, **options[, search=spec.search][, symmetric=..., channel_axis=...])`.
    Stack it to register one class under several kinds (with different presets)."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options of quantizer kind {name!r} must be a dataclass, got {options!r}")

    def register(cls: type) -> type:
        old = _KINDS.get(name)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"quantizer kind {name!r} is registered twice ({old.cls.__qualname__}, {cls.__qualname__})")
        _KINDS[name] = KindEntry(name, cls, options, search, layout, dict(preset or {}))
        return cls

    return register


def quantizer_kinds() -> tuple[str, ...]:
    """Every registered kind's name, sorted."""
    return tuple(sorted(_KINDS))


def kind_entry(name: str) -> KindEntry:
    """The registered kind `name`; ConfigError naming the registered kinds otherwise."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown quantizer kind {name!r}; choose one of {list(quantizer_kinds())}") from None
