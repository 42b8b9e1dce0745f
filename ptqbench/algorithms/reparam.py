"""Scale reparameterization of post-LayerNorm activations (RepQ-ViT; reused by ERQ and DopQ-ViT).

A per-channel quantizer on a LayerNorm output (scales s_c, integer zero points z_c) is turned
into one per-tensor quantizer (s~, z~) by folding r = s / s~ and b = s~ (z~ - z) into the
LayerNorm affine (gamma /= r, beta = beta / r - b) and into the next Linear (W[:, c] *= r_c,
bias += W_new @ b). The float function is unchanged; with an integer z~ the per-tensor
quantization of the new activation equals the per-channel quantization of the old one exactly.

Window padding. Swin (timm's block and mmdet's ShiftWindowMSA) zero-pads the norm1 output to a
multiple of the window before qkv, and the padded tokens take part in attention. After the fold
the norm emits x / r - b, so a padded 0 no longer stands for the original 0 (whose image is -b):
the padded keys and values change, and so does every real token sharing a window with them.
With `exact_padding` (the default) a pair whose Linear sits behind such padding (`pad_site`, the
window attention) keeps only 1 / r in the LayerNorm and adds -b to the attention's input after
the padding: real tokens get x / r - b as before, padded ones -b, the image of 0, which is what a
deployment gets by padding each channel with its zero point. `exact_padding=False` reproduces
the released RepQ-ViT detection code, which pads with zeros after the fold
(detection/tools/test.py, main(), "scale reparameterization"; the Swin release's
SwinTransformerBlock.forward pads after norm1).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ptqbench.models.structure import ReparamPair
from ptqbench.quant.uniform import UniformQuantizer

# How the shared scale is chosen from the per-channel scales. RepQ-ViT uses the mean; DopQ-ViT's
# MOSF plugs in a robust choice here.
SharedScaleFn = Callable[[torch.Tensor], torch.Tensor]


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


MOSF_STATISTICS = ("median", "inlier_mean")


def mosf_scale(k: float = 3.0, deviation: str = "median", statistic: str = "inlier_mean") -> SharedScaleFn:
    """DopQ-ViT's MOSF (ptqbench's readings): the shared scale is the median of the channel scales
    (`statistic="median"`: the v2 abstract's "select Median as the Optimal Scaling Factor"; the
    median minimizes the mean absolute deviation), or the mean of the inlier channel scales,
    channels farther than k MADs from the median being outliers (`"inlier_mean"`: the v3 abstract's
    "MAD-guided"). Costs nothing at inference: it only changes which s~ the reparameterization
    folds in."""
    if statistic not in MOSF_STATISTICS:
        raise ValueError(f"MOSF statistic {statistic!r}; choose one of {MOSF_STATISTICS}")

    def shared(scales: torch.Tensor) -> torch.Tensor:
        if statistic == "median":
            return scales.median()
        return scales[mad_inliers(scales, k, deviation)].mean()

    return shared


REPARAM_ARITHMETIC = ("float64", "float32")


@torch.no_grad()
def reparameterize(
    pair: ReparamPair,
    round_zero_point: bool = True,
    shared_scale: SharedScaleFn = mean_scale,
    exact_padding: bool = True,
    arithmetic: str = "float64",
) -> dict[str, float]:
    """Fold the per-channel input quantizer of `pair.linear` into `pair.norm` and the Linear.

    Args:
        pair: the LayerNorm -> Linear pair; the Linear's input quantizer must be a calibrated
            per-channel UniformQuantizer.
        round_zero_point: round z~ = mean(z) to an integer (exact equivalence with per-channel
            quantization). False reproduces the released RepQ-ViT code's fractional z~.
        shared_scale: picks s~ from the per-channel scales.
        exact_padding: for a pair with a `pad_site`, apply the shift -b after the window padding
            (padded tokens = the image of 0; exact at every input size). False: fold -b into the
            LayerNorm as the released code does (padded tokens = 0 after the fold).
        arithmetic: "float64" (every factor in double, rounded once) or "float32" (the released
            RepQ-ViT family's float32 operations in their order: r = s / s~, b = -z s / r + z~ s~,
            W r, bias + (W r) b; the last float bit of the folded weights decides rounding ties
            and percentile picks of the weight quantizers at 3-4 bits).

    Returns:
        a few numbers for the record: s~, z~, and the spread of r.
    """
    aq = pair.linear.input_quantizer
    if not isinstance(aq, UniformQuantizer) or not aq.per_channel or not aq.calibrated:
        raise ValueError(f"{pair.name}: reparameterization needs a calibrated per-channel uniform input quantizer")
    norm, lin = pair.norm, pair.linear
    if norm.weight is None or norm.bias is None:
        raise ValueError(f"{pair.name}: LayerNorm without affine parameters cannot absorb the reparameterization")
    if arithmetic not in REPARAM_ARITHMETIC:
        raise ValueError(f"arithmetic={arithmetic!r}; choose one of {REPARAM_ARITHMETIC}")
    work = torch.float64 if arithmetic == "float64" else torch.float32
    s = aq.scale.reshape(-1).to(work)
    z = aq.zero_point.reshape(-1).to(work)
    s_t = shared_scale(s).to(work)
    z_t = z.mean()
    if round_zero_point:
        z_t = torch.round(z_t)
    r = s / s_t
    b = s_t * (z_t - z) if work == torch.float64 else (-z * s) / r - (-z_t * s_t)
    dtype = norm.weight.dtype
    norm.weight.copy_((norm.weight.to(work) / r).to(dtype))
    if pair.pad_site is not None and exact_padding:
        if getattr(pair.pad_site, "input_shift", None) is not None:
            raise ValueError(f"{pair.name}: its window attention already holds a shift (reparameterized twice?)")
        norm.bias.copy_((norm.bias.to(work) / r).to(dtype))
        pair.pad_site.input_shift = (-b).to(dtype)
    else:
        norm.bias.copy_((norm.bias.to(work) / r - b).to(dtype))
    w_new = lin.weight.to(work) * r[None, :]
    lin.weight.copy_(w_new.to(lin.weight.dtype))
    # float32: torch.mm as released (a matrix-vector product sums in another order)
    shift = (w_new @ b if work == torch.float64 else torch.mm(w_new, b.reshape(-1, 1)).reshape(-1)).to(lin.weight.dtype)
    if lin.bias is None:  # Swin's PatchMerging.reduction has no bias: give it one
        lin.bias = nn.Parameter(shift.clone())
    else:
        lin.bias.add_(shift)
    aq.set_params(s_t.float(), z_t.float(), channel_axis=None)
    if lin.weight_quantizer is not None:
        lin.weight_quantizer.reset()  # weights changed: recalibrate
    return {"scale": float(s_t), "zero_point": float(z_t), "r_min": float(r.min()), "r_max": float(r.max())}


def reparameterize_all(
    pairs: list[ReparamPair], round_zero_point: bool = True, shared_scale: SharedScaleFn = mean_scale,
    exact_padding: bool = True, arithmetic: str = "float64",
) -> dict[str, dict[str, float]]:
    """Reparameterize every pair; returns per-pair statistics keyed by name."""
    return {p.name: reparameterize(p, round_zero_point, shared_scale, exact_padding, arithmetic) for p in pairs}


