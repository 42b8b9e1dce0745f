"""The one model-patching layer: turns a timm ViT/DeiT/Swin, or an mmdet detector with a Swin
backbone, into a quantizable model.

Every Linear and Conv2d become QuantLinear/QuantConv2d, attention gets QuantMatMuls, and every
activation quantizer is tagged with its role (ptqbench.quant.roles). A `QuantPlan` from the method
decides which quantizer each role gets; roles without a spec stay FP. The adapter also lists the
LayerNorm -> Linear pairs that reparameterization may fold into. What is specific to mmdet's Swin
lives in `mmdet_swin.py` and is imported only for models that contain mmdet modules.
`scope` restricts patching to a submodule (a detector's `backbone`); everything else stays FP.

When the plan has specs for the fully quantized roles (`roles.FULL_ROLES`, `quant.full=true`),
the adapter also patches the ops the common protocol leaves in FP: LayerNorm inputs and residual
adds (ptqbench.models.blocks), the softmax (a QuantSoftmax inside the attention) and GELU (a
QuantAct around timm Mlp's act). Without such specs nothing of this is touched (timm models only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from timm.layers import Mlp
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, WindowAttention
from timm.models.vision_transformer import Attention, Block
import torch
from torch import nn

from ptqbench.errors import ConfigError
from ptqbench.models.attention import QuantAttention, QuantWindowAttention, padded_window_attention
from ptqbench.models.blocks import QuantBlock, QuantSwinBlock, attach_norm_input
from ptqbench.quant import roles
from ptqbench.quant.calibration import quantizers
from ptqbench.quant.modules import QuantConv2d, QuantLinear, QuantMatMul
from ptqbench.quant.nonlinear import QuantAct, QuantSoftmax
from ptqbench.models.structure import ReparamPair
from ptqbench.quant.spec import QuantPlan


@dataclass
class QuantizedModel:
    """A patched model plus what methods need to know about its structure."""

    model: nn.Module
    plan: QuantPlan
    reparam_pairs: list[ReparamPair] = field(default_factory=list)
    linear_roles: dict[str, str] = field(default_factory=dict)

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


def _mmdet_swin(model: nn.Module) -> Any:
    """ptqbench.models.mmdet_swin if `model` contains mmdet modules, else None (no mmdet import)."""
    if any(type(m).__module__.startswith("mmdet.") for m in model.modules()):
        from ptqbench.models import mmdet_swin

        return mmdet_swin
    return None


def _plain_types(mmdet: Any) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Linear and Conv2d classes the adapter replaces (exact types: subclasses with their own
    forward, e.g. ConvTranspose2d or already quantized modules, are left alone)."""
    if mmdet is None:
        return (nn.Linear,), (nn.Conv2d,)
    return (nn.Linear, *mmdet.PLAIN_LINEAR_TYPES), (nn.Conv2d, *mmdet.PLAIN_CONV_TYPES)


def _linear_roles(model: nn.Module) -> dict[str, str]:
    """Role of the *input* of each Linear, read from the module structure (not from names)."""
    found: dict[str, str] = {}
    named = dict(model.named_modules())
    ids = {id(m): n for n, m in named.items()}
    mmdet = _mmdet_swin(model)
    for name, m in named.items():
        if mmdet is not None:
            found.update(mmdet.linear_roles(name, m))
        if isinstance(m, (Attention, WindowAttention)):
            found[f"{name}.qkv"] = roles.POST_LN
            found[f"{name}.proj"] = roles.ATTN_OUT
        elif isinstance(m, Mlp):
            found[f"{name}.fc1"] = roles.POST_LN
            found[f"{name}.fc2"] = roles.POST_GELU
        elif isinstance(m, PatchMerging):
            found[f"{name}.reduction"] = roles.POST_LN
    get_cls = getattr(model, "get_classifier", None)
    head = get_cls() if callable(get_cls) else None
    if isinstance(head, nn.Linear) and id(head) in ids:
        found[ids[id(head)]] = roles.HEAD_IN
    return {n: found.get(n, roles.OTHER_IN) for n, m in named.items() if isinstance(m, nn.Linear)}


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _build(plan: QuantPlan, role: str) -> Optional[nn.Module]:
    spec = plan.for_role(role)
    return spec.build(role, channel_axis=-1) if spec is not None else None


def _weight_quantizer(plan: QuantPlan) -> Optional[nn.Module]:
    return plan.weight.build(roles.WEIGHT, channel_axis=0) if plan.weight is not None else None


def _reparam_pairs(model: nn.Module) -> list[ReparamPair]:
    pairs: list[ReparamPair] = []
    mmdet = _mmdet_swin(model)
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        cands = mmdet.reparam_candidates(m) if mmdet is not None else []
        if not cands and all(hasattr(m, a) for a in ("norm1", "attn", "norm2", "mlp")):
            cands = [("norm1", getattr(m.attn, "qkv", None)), ("norm2", getattr(m.mlp, "fc1", None))]
        elif not cands and isinstance(m, PatchMerging):
            cands = [("norm", m.reduction)]
        for norm_attr, lin in cands:
            norm = getattr(m, norm_attr)
            if isinstance(norm, nn.LayerNorm) and isinstance(lin, QuantLinear):
                pairs.append(ReparamPair(f"{prefix}{norm_attr}", norm, lin, padded_window_attention(m, lin)))
    return pairs


def is_full(plan: QuantPlan) -> bool:
    """True when the plan quantizes any of the ops the common protocol leaves in FP."""
    return any(plan.for_role(r) is not None for r in roles.FULL_ROLES) or plan.softmax_lut_bits is not None


def _softmax(plan: QuantPlan) -> Optional[QuantSoftmax]:
    if not is_full(plan):
        return None
    return QuantSoftmax(_build(plan, roles.SOFTMAX_IN), plan.softmax_lut_bits)


def _patch_full(model: nn.Module, plan: QuantPlan) -> None:
    """LayerNorm inputs, residual adds and GELU inputs (the softmax is patched with attention)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, Block):
            QuantBlock.adopt(m, _build(plan, roles.RESIDUAL), _build(plan, roles.RESIDUAL))
        elif isinstance(m, SwinTransformerBlock):
            QuantSwinBlock.adopt(m, _build(plan, roles.RESIDUAL), _build(plan, roles.RESIDUAL))
        elif isinstance(m, Mlp) and not isinstance(m.act, QuantAct):
            m.act = QuantAct(m.act, _build(plan, roles.GELU_IN))
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.LayerNorm):
            attach_norm_input(m, _build(plan, roles.LN_IN))


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
        model: a timm ViT/DeiT/Swin, or an mmdet detector (or a module wrapping one).
        plan: which quantizer each role gets.
        scope: dotted name of the only submodule to patch (e.g. "detector.backbone"); None
            patches the whole model.

    All quantizers start uncalibrated; run a method's quantize() (or quant.calibrate) next.
    """
    mmdet = _mmdet_swin(model)
    linear_types, conv_types = _plain_types(mmdet)
    device = _model_device(model)
    if scope:
        try:
            target = model.get_submodule(scope)
        except AttributeError as e:
            raise ConfigError(f"quantization scope {scope!r} is not a submodule of {type(model).__name__}") from e
        prefix = f"{scope}."
    else:
        target, prefix = model, ""
    linear_roles = {prefix + n: r for n, r in _linear_roles(target).items()}
    for name, m in list(target.named_modules()):
        if mmdet is not None and mmdet.is_attention(m):
            mmdet.QuantWindowMSA.adopt(m, QuantMatMul(_build(plan, roles.Q), _build(plan, roles.K)),
                                       QuantMatMul(_build(plan, roles.POST_SOFTMAX), _build(plan, roles.V)))
        elif isinstance(m, Attention):
            QuantAttention.adopt(m, QuantMatMul(_build(plan, roles.Q), _build(plan, roles.K)),
                                 QuantMatMul(_build(plan, roles.POST_SOFTMAX), _build(plan, roles.V)), _softmax(plan))
        elif isinstance(m, WindowAttention):
            QuantWindowAttention.adopt(m, QuantMatMul(_build(plan, roles.Q), _build(plan, roles.K)),
                                       QuantMatMul(_build(plan, roles.POST_SOFTMAX), _build(plan, roles.V)), _softmax(plan))
    if is_full(plan):
        _patch_full(target, plan)
    patch_suffixes = ("patch_embed.proj",) + ((mmdet.PATCH_EMBED_CONV_SUFFIX,) if mmdet is not None else ())
    for name, m in list(target.named_modules()):
        full = prefix + name
        if type(m) in linear_types:
            _set_child(model, full, QuantLinear(m, _build(plan, linear_roles[full]), _weight_quantizer(plan)))
        elif type(m) in conv_types:
            role = roles.PATCH_IN if name.endswith(patch_suffixes) else roles.OTHER_IN
            _set_child(model, full, QuantConv2d(m, _build(plan, role), _weight_quantizer(plan)))
    for qname, q in quantizers(model).items():
        q.qname = qname
        if device is not None:
            q.to(device)  # built on the CPU; a model already on CUDA needs its quantizers there too
    pairs = [ReparamPair(prefix + p.name, p.norm, p.linear, p.pad_site) for p in _reparam_pairs(target)]
    return QuantizedModel(model, plan, pairs, linear_roles)
