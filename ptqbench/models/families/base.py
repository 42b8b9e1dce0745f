"""The model-family protocol: everything the patching layer and the block-wise algorithms need to
know about one kind of network, in one place.

`make_quantizable` (ptqbench.models.adapter) is a generic loop over what `family_of(model)`
provides; adding a family is one file that subclasses `BaseFamily` (or implements `ModelFamily`)
and calls `register_family`; the package imports every module in it (docs/contributing.md).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.models.structure import ReparamPair, Unit
from ptqbench.quant import roles
from ptqbench.quant.modules import QuantLinear, QuantMatMul
from ptqbench.quant.nonlinear import QuantSoftmax
from ptqbench.quant.spec import QuantPlan


def is_full(plan: QuantPlan) -> bool:
    """True when the plan quantizes any of the ops the common protocol leaves in FP."""
    return any(plan.for_role(r) is not None for r in roles.FULL_ROLES) or plan.softmax_lut_bits is not None


class QuantBuilder:
    """Builds the quantizers a plan asks for, role by role, so families never read the plan."""

    def __init__(self, plan: QuantPlan) -> None:
        self.plan = plan

    @property
    def full(self) -> bool:
        return is_full(self.plan)

    def act(self, role: str) -> Optional[nn.Module]:
        """The activation quantizer for `role` (None: that role stays FP)."""
        spec = self.plan.for_role(role)
        return spec.build(role, channel_axis=-1) if spec is not None else None

    def weight(self) -> Optional[nn.Module]:
        return self.plan.weight.build(roles.WEIGHT, channel_axis=0) if self.plan.weight is not None else None

    @property
    def scale_product(self) -> bool:
        """Attention multiplies 1/sqrt(d) after the quantized q @ k^T (QuantPlan.attention_scale)."""
        return self.plan.attention_scale == "product"

    def matmuls(self) -> tuple[QuantMatMul, QuantMatMul]:
        """The q @ k^T and attn @ v products of one attention."""
        return (QuantMatMul(self.act(roles.Q), self.act(roles.K)),
                QuantMatMul(self.act(roles.POST_SOFTMAX), self.act(roles.V)))

    def softmax(self) -> Optional[QuantSoftmax]:
        """A quantized softmax in the fully quantized mode, else None (the float softmax stays)."""
        if not self.full:
            return None
        return QuantSoftmax(self.act(roles.SOFTMAX_IN), self.plan.softmax_lut_bits)

    def requested_full_roles(self) -> list[str]:
        """The fully quantized roles this plan quantizes (the LUT softmax counts as softmax_in)."""
        out = [r for r in roles.FULL_ROLES if self.plan.for_role(r) is not None]
        if self.plan.softmax_lut_bits is not None and roles.SOFTMAX_IN not in out:
            out.append(roles.SOFTMAX_IN)
        return out


@runtime_checkable
class ModelFamily(Protocol):
    """One kind of network (timm ViT/DeiT, timm Swin, mmdet Swin detectors, ...).

    Attributes:
        name: the registry key, written to the run record.
        description: one line for error messages ("timm VisionTransformer (ViT, DeiT)").
        full_roles: the fully quantized roles (roles.FULL_ROLES) whose ops `patch_full` patches.
        patch_embed_suffixes: names ending so are the patch-embedding convolution (role patch_in).
    """

    name: str
    description: str
    full_roles: frozenset[str]
    patch_embed_suffixes: tuple[str, ...]

    def matches(self, model: nn.Module) -> bool:
        """True when this family knows `model`'s structure."""

    def layer_types(self) -> tuple[tuple[type, ...], tuple[type, ...]]:
        """Exact Linear and Conv2d classes to replace by QuantLinear / QuantConv2d."""

    def linear_roles(self, model: nn.Module) -> dict[str, str]:
        """Input role of the Linears the family recognises, by dotted name (others: other_in)."""

    def patch_attention(self, model: nn.Module, build: QuantBuilder) -> None:
        """Swap each attention for its unfused, quantizable subclass (in place)."""

    def patch_full(self, model: nn.Module, build: QuantBuilder) -> None:
        """Patch the fully quantized mode's ops (LayerNorm inputs, residual adds, GELU)."""

    def reparam_pairs(self, model: nn.Module) -> list[ReparamPair]:
        """LayerNorm -> QuantLinear pairs reparameterization may fold into (after patching)."""

    def units(self, model: nn.Module) -> list[Unit]:
        """The forward pass as units, in order (after patching: units hold the patched modules)."""

    def unit_input(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """The first unit's input, from the model's calibration input (a detector's batch dict -> images)."""

    def output_loss(self, model: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """A scalar task loss of the first unit's input for Hessian-weighted searches; None: the
        classifier's (cross-entropy of the logits against the model's own top-1)."""


class BaseFamily:
    """Defaults for a family: plain nn.Linear / nn.Conv2d, no attention, no fully quantized ops,
    no reparameterization pairs, no units. Subclasses override what their network has."""

    name = ""
    description = ""
    full_roles: frozenset[str] = frozenset()
    patch_embed_suffixes: tuple[str, ...] = ()

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must say which models it matches")

    def layer_types(self) -> tuple[tuple[type, ...], tuple[type, ...]]:
        return (nn.Linear,), (nn.Conv2d,)

    def linear_roles(self, model: nn.Module) -> dict[str, str]:
        return {}

    def patch_attention(self, model: nn.Module, build: QuantBuilder) -> None:
        return None

    def patch_full(self, model: nn.Module, build: QuantBuilder) -> None:
        if build.full:
            raise ConfigError(f"model family {self.name} has no fully quantized mode; use quant.full=false")

    def reparam_pairs(self, model: nn.Module) -> list[ReparamPair]:
        return []

    def units(self, model: nn.Module) -> list[Unit]:
        return []

    def unit_input(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        return inputs

    def output_loss(self, model: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        return None


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add `family` to the registry (tried in registration order by `family_of`)."""
    if not family.name:
        raise ValueError(f"{type(family).__name__} has no name")
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered ({type(FAMILIES[family.name]).__name__})")
    missing = [a for a in ModelFamily.__annotations__ if not hasattr(family, a)]
    if missing or not isinstance(family, ModelFamily):
        raise TypeError(f"{type(family).__name__} does not implement ModelFamily (missing {missing or 'methods'})")
    FAMILIES[family.name] = family
    return family


def family_of(model: nn.Module) -> ModelFamily:
    """The first registered family that matches `model`."""
    for family in FAMILIES.values():
        if family.matches(model):
            return family
    known = "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values())
    raise ConfigError(f"no model family knows {type(model).__name__}; registered families: {known}. "
                      "Add one in ptqbench/models/families/ (register_family)")


def pair_if_quantized(prefix: str, owner: nn.Module, norm_attr: str, linear: Optional[nn.Module],
                      pad_site: Optional[nn.Module] = None) -> list[ReparamPair]:
    """[the pair] when `owner.<norm_attr>` is a LayerNorm feeding the QuantLinear `linear`, else []."""
    norm = getattr(owner, norm_attr)
    if isinstance(norm, nn.LayerNorm) and isinstance(linear, QuantLinear):
        return [ReparamPair(f"{prefix}{norm_attr}", norm, linear, pad_site)]
    return []
