"""The one model-patching layer: turns a model of a registered family (ptqbench.models.families:
timm ViT/DeiT, timm Swin, mmdet Swin detectors, ...) into a quantizable model.

Every Linear and Conv2d become QuantLinear/QuantConv2d, attention gets QuantMatMuls, and every
activation quantizer is tagged with its role (ptqbench.quant.roles). A `QuantPlan` from the method
decides which quantizer each role gets; roles without a spec stay FP. What differs between
networks (which Linear reads what, which attention to swap, the LayerNorm -> Linear pairs, the
units) comes from the model's family; this module is the generic loop over it.
`scope` restricts patching to a submodule (a detector's `backbone`); everything else stays FP.

When the plan has specs for the fully quantized roles (`roles.FULL_ROLES`, `quant.full=true`),
the family also patches the ops the common protocol leaves in FP: LayerNorm inputs, residual
adds, the softmax and GELU. Without such specs nothing of this is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.models.blocks import QuantBlock, QuantSwinBlock
from ptqbench.models.families import QuantBuilder, family_of
from ptqbench.models.families.base import is_full
from ptqbench.models.structure import ReparamPair, Unit
from ptqbench.quant import roles
from ptqbench.quant.calibration import quantizers
from ptqbench.quant.modules import QuantConv2d, QuantLinear, QuantMatMul
from ptqbench.quant.nonlinear import QuantAct, QuantSoftmax
from ptqbench.quant.spec import QuantPlan

__all__ = ["QuantizedModel", "is_full", "make_quantizable"]


@dataclass
class QuantizedModel:
    """A patched model plus what methods need to know about its structure.

    `units` reference the patched modules; `fp_targets` is set by the pipeline (the FP outputs of
    each unit that reconstruction trains against), None until then; `fp_teacher` is an FP copy of
    the model a recipe keeps while its steps change the FP weights (steps.WithFPTeacher), else None."""

    model: nn.Module
    plan: QuantPlan
    family: str
    reparam_pairs: list[ReparamPair] = field(default_factory=list)
    linear_roles: dict[str, str] = field(default_factory=dict)
    units: list[Unit] = field(default_factory=list)
    fp_targets: Optional[Any] = None
    fp_teacher: Optional[Any] = None

    def quantizer_map(self) -> dict[str, dict[str, Any]]:
        """Per-quantizer description (kind, bits, role, granularity) for the run record."""
        return {name: q.describe() for name, q in quantizers(self.model).items()}

    def quantized_roles(self) -> list[str]:
        """Roles that have at least one quantizer, sorted (the record's protocol says which
        tensors a run quantized)."""
        return sorted({q.role for q in quantizers(self.model).values()})

    def counts(self) -> dict[str, int]:
        """How many modules of each quantized kind, and quantizers per role."""
        out: dict[str, int] = {}
        for m in self.model.modules():
            if isinstance(m, (QuantLinear, QuantConv2d, QuantMatMul, QuantSoftmax, QuantAct, QuantBlock, QuantSwinBlock)):
                out[type(m).__name__] = out.get(type(m).__name__, 0) + 1
        for q in quantizers(self.model).values():
            key = f"quantizers.{q.role}"
            out[key] = out.get(key, 0) + 1
        return out


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _model_device(model: nn.Module) -> Optional[torch.device]:
    """The one device the model's parameters live on (None for a model without parameters)."""
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        raise ConfigError(f"the model's parameters are spread over {sorted(map(str, devices))}; "
                          "move the whole model to one device before quantizing it")
    return next(iter(devices), None)


def make_quantizable(model: nn.Module, plan: QuantPlan, scope: Optional[str] = None) -> QuantizedModel:
    """Patch `model` in place for `plan` and return it wrapped with its structure.

    Args:
        model: a model of a registered family (a timm ViT/DeiT/Swin, an mmdet detector or a
            module wrapping one, ...).
        plan: which quantizer each role gets.
        scope: dotted name of the only submodule to patch (e.g. "detector.backbone"); None
            patches the whole model.

    All quantizers start uncalibrated; run a method's quantize() (or quant.calibrate) next.
    """
    family = family_of(model)
    build = QuantBuilder(plan)
    unsupported = [r for r in build.requested_full_roles() if r not in family.full_roles]
    if unsupported:
        raise ConfigError(f"model family {family.name} cannot quantize {unsupported} (fully quantized mode); "
                          "use quant.full=false")
    linear_types, conv_types = family.layer_types()
    device = _model_device(model)
    if scope:
        try:
            target = model.get_submodule(scope)
        except AttributeError as e:
            raise ConfigError(f"quantization scope {scope!r} is not a submodule of {type(model).__name__}") from e
        prefix = f"{scope}."
    else:
        target, prefix = model, ""
    found = family.linear_roles(target)
    linear_roles = {prefix + n: found.get(n, roles.OTHER_IN) for n, m in target.named_modules() if isinstance(m, nn.Linear)}
    family.patch_attention(target, build)
    if build.full:
        family.patch_full(target, build)
    for name, m in list(target.named_modules()):
        full = prefix + name
        if type(m) in linear_types:
            _set_child(model, full, QuantLinear(m, build.act(linear_roles[full]), build.weight()))
        elif type(m) in conv_types:
            role = roles.PATCH_IN if name.endswith(family.patch_embed_suffixes) else roles.OTHER_IN
            _set_child(model, full, QuantConv2d(m, build.act(role), build.weight()))
    for qname, q in quantizers(model).items():
        q.qname = qname
        if device is not None:
            q.to(device)  # built on the CPU; a model already on CUDA needs its quantizers there too
    pairs = [ReparamPair(prefix + p.name, p.norm, p.linear, p.pad_site) for p in family.reparam_pairs(target)]
    return QuantizedModel(model, plan, family.name, pairs, linear_roles, family.units(model))
