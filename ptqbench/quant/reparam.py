"""Scale reparameterization of post-LayerNorm activations (RepQ-ViT; reused by ERQ and DopQ-ViT).

A per-channel quantizer on a LayerNorm output (scales s_c, integer zero points z_c) is turned
into one per-tensor quantizer (s~, z~) by folding r = s / s~ and b = s~ (z~ - z) into the
LayerNorm affine (gamma /= r, beta = beta / r - b) and into the next Linear (W[:, c] *= r_c,
bias += W_new @ b). The float function is unchanged; with an integer z~ the per-tensor
quantization of the new activation equals the per-channel quantization of the old one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ptqbench.quant.modules import QuantLinear
from ptqbench.quant.uniform import UniformQuantizer

# How the shared scale is chosen from the per-channel scales. RepQ-ViT uses the mean; DopQ-ViT's
# MOSF plugs in a robust choice here.
SharedScaleFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ReparamPair:
    """A LayerNorm whose output feeds exactly one quantized Linear (and nothing else quantized)."""

    name: str
    norm: nn.LayerNorm
    linear: QuantLinear


def mean_scale(scales: torch.Tensor) -> torch.Tensor:
    return scales.mean()


DEVIATIONS = ("median", "mean")


def mad_inliers(scales: torch.Tensor, k: float, deviation: str = "median") -> torch.Tensor:
    """Mask of the channels whose scale lies within k deviations of the median scale.

    `deviation`: "median" = median absolute deviation (robust; the default), "mean" = mean
    absolute deviation (the expansion some summaries of DopQ-ViT give for "MAD"). A zero deviation
    (most channels share one scale) keeps the channels equal to the median.
    """
    if deviation not in DEVIATIONS:
        raise ValueError(f"MAD deviation {deviation!r}; choose one of {DEVIATIONS}")
    if k <= 0:
        raise ValueError(f"MOSF threshold k must be > 0, got {k}")
    med = scales.median()
    dev = (scales - med).abs()
    mad = dev.median() if deviation == "median" else dev.mean()
    return dev <= k * mad if mad > 0 else dev <= 0


def mosf_scale(k: float = 3.0, deviation: str = "median") -> SharedScaleFn:
    """DopQ-ViT's MOSF (ptqbench's reading): the shared scale is the mean of the inlier channel
    scales, channels farther than k MADs from the median being outliers. Costs nothing at
    inference: it only changes which s~ the reparameterization folds in."""

    def shared(scales: torch.Tensor) -> torch.Tensor:
        return scales[mad_inliers(scales, k, deviation)].mean()

    return shared


@torch.no_grad()
def reparameterize(
    pair: ReparamPair,
    round_zero_point: bool = True,
    shared_scale: SharedScaleFn = mean_scale,
) -> dict[str, float]:
    """Fold the per-channel input quantizer of `pair.linear` into `pair.norm` and the Linear.

    Args:
        pair: the LayerNorm -> Linear pair; the Linear's input quantizer must be a calibrated
            per-channel UniformQuantizer.
        round_zero_point: round z~ = mean(z) to an integer (exact equivalence with per-channel
            quantization). False reproduces the released RepQ-ViT code's fractional z~.
        shared_scale: picks s~ from the per-channel scales.

    Returns:
        a few numbers for the record: s~, z~, and the spread of r.
    """
    aq = pair.linear.input_quantizer
    if not isinstance(aq, UniformQuantizer) or not aq.per_channel or not aq.calibrated:
        raise ValueError(f"{pair.name}: reparameterization needs a calibrated per-channel uniform input quantizer")
    norm, lin = pair.norm, pair.linear
    if norm.weight is None or norm.bias is None:
        raise ValueError(f"{pair.name}: LayerNorm without affine parameters cannot absorb the reparameterization")
    s = aq.scale.reshape(-1).double()
    z = aq.zero_point.reshape(-1).double()
    s_t = shared_scale(s).double()
    z_t = z.mean()
    if round_zero_point:
        z_t = torch.round(z_t)
    r = s / s_t
    b = s_t * (z_t - z)
    dtype = norm.weight.dtype
    norm.weight.copy_((norm.weight.double() / r).to(dtype))
    norm.bias.copy_((norm.bias.double() / r - b).to(dtype))
    w_new = lin.weight.double() * r[None, :]
    lin.weight.copy_(w_new.to(lin.weight.dtype))
    shift = (w_new @ b).to(lin.weight.dtype)
    if lin.bias is None:  # Swin's PatchMerging.reduction has no bias: give it one
        lin.bias = nn.Parameter(shift.clone())
    else:
        lin.bias.add_(shift)
    aq.set_params(s_t.float(), z_t.float(), channel_axis=None)
    if lin.weight_quantizer is not None:
        lin.weight_quantizer.reset()  # weights changed: recalibrate
    return {"scale": float(s_t), "zero_point": float(z_t), "r_min": float(r.min()), "r_max": float(r.max())}


def reparameterize_all(
    pairs: list[ReparamPair], round_zero_point: bool = True, shared_scale: SharedScaleFn = mean_scale
) -> dict[str, dict[str, float]]:
    """Reparameterize every pair; returns per-pair statistics keyed by name."""
    return {p.name: reparameterize(p, round_zero_point, shared_scale) for p in pairs}


