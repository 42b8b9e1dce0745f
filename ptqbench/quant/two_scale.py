"""Two-scaled scaling factors (TSPTQ-ViT, ICASSP 2023): V-2SF and O-2SF.

No code of TSPTQ-ViT is public and the abstract and summaries do not give its formulas, so this
follows the reading in the project's method notes (../shared/docs/METHODS.md), with every free
parameter an option of TSPTQConfig (see docs/methods.md, "tsptq").

V-2SF (value-aware, post-softmax and post-GELU), per tensor. A b-bit code is one region bit plus
b-1 level bits (L = 2^(b-1) levels per region):

    fine region   (region bit 0): x_hat = (l - z) * s,    l in [0, L-1]  (z > 0 only for GELU's
                                                                          small negative values)
    coarse region (region bit 1): x_hat = l * s * 2^k,    l in [0, L-1]  (non-negative)

A value goes to the fine region when it lies below the fine region's top plus half a step,
else to the coarse one: dense small values keep a fine step, the few large ones a power-of-two
multiple of it (a shift in integer hardware). The coarse region reaches `top` = s 2^k (L - 1);
candidates are `top` in {max, the search percentiles} x k in 1..k_max, chosen by MSE.

O-2SF (outlier-aware, LayerNorm outputs), per tensor with one shared second scale: channels whose
calibrated range exceeds `ratio` x the median channel range are outliers; the other channels get
one asymmetric (s, z) by the range search, the outlier channels share s * 2^k with their own
zero point (centred on their joint range), k in 1..k_max by MSE on the outlier channels. `ratio`
is picked by MSE over the whole tensor among `ratios`. The per-channel region is one bit per
channel, known ahead of time (no per-value flag).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import register_kind
from ptqbench.quant.ranges import RangeSearch, candidate_ranges, pick_by_mse, subsample
from ptqbench.quant.uniform import fake_quant, fit_rows, params_from_range, qrange, select_below


def v2sf_fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, shift: torch.Tensor,
                    levels: int) -> torch.Tensor:
    """Quantize-dequantize with V-2SF (parameters broadcast against `x`)."""
    coarse_scale = scale * torch.exp2(shift)
    threshold = (levels - 0.5 - zero_point) * scale
    if (not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and x.requires_grad)
            and all(t.dim() == 0 for t in (scale, zero_point, shift)) and float(threshold) > 0 and float(scale) > 0):
        return _v2sf_inference(x, float(threshold), float(scale), float(zero_point), float(coarse_scale), levels)
    fine = fake_quant(x, scale, zero_point, 0, levels - 1)
    coarse = fake_quant(x, coarse_scale, torch.zeros_like(coarse_scale), 0, levels - 1)
    return torch.where(x < threshold, fine, coarse)


def _v2sf_inference(x: torch.Tensor, threshold: float, scale: float, zero: float, coarse_scale: float,
                    levels: int) -> torch.Tensor:
    """`v2sf_fake_quant` without autograd, per-tensor parameters: each element's own region's
    formula with a per-element step, one pass per operation instead of quantizing the whole tensor
    twice and selecting. The fine region's codes are clamped to [-z, L-1-z], the coarse one's to
    [0, L-1]; a coarse value is positive (it lies above (L - 1/2 - z) s > 0), so -z serves as the
    lower bound of both, and only the upper bound differs by region when z != 0 (the caller checks
    that the threshold and s are positive)."""
    s = select_below(x, threshold, scale, coarse_scale)
    y = torch.div(x, s)
    y.round_().clamp_(0.0 - zero, levels - 1)
    if zero != 0.0 and _fine_code_can_pass(threshold, scale, levels - 1 - zero, x.dtype):
        torch.minimum(y, select_below(x, threshold, levels - 1 - zero, levels - 1.0), out=y)
    return y.mul_(s)


def _fine_code_can_pass(threshold: float, scale: float, top: float, dtype: torch.dtype) -> bool:
    """Whether a fine-region value (x < threshold) can round to a code above `top` = L-1-z, so
    that the fine region's own upper bound must be applied. Rounded division is monotonic in x,
    so the largest value below the threshold decides: only when the threshold itself was rounded
    up can that value's code reach L-z. Usually it cannot, and the second selection is skipped."""
    t = torch.tensor(threshold, dtype=dtype)
    largest = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(torch.round(largest / torch.tensor(scale, dtype=dtype))) > top


@dataclass(frozen=True)
class V2SFOptions:
    """k_max: the largest power-of-two ratio between the two scales."""

    k_max: int = 6


@dataclass(frozen=True)
class O2SFOptions:
    """ratios: candidate outlier-to-normal scale ratios (> 1); k_max: as V-2SF's."""

    ratios: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    k_max: int = 6


@register_kind("v2sf", options=V2SFOptions, search=True)
class ValueTwoScaleQuantizer(Quantizer):
    """V-2SF: fine scale s for small values, s * 2^k for large ones, one code bit says which.

    Args:
        bits: code width including the region bit (>= 2).
        role: post_softmax or post_gelu (any tensor whose mass sits near zero works).
        k_max: largest power-of-two ratio exponent tried (k in 1..k_max).
        search: `minmax` tries the maximum as the coarse top only; `mse`/`percentile` also try the
            search percentiles.
    """

    kind = "v2sf"

    def __init__(self, bits: int, role: str, k_max: int = 6, search: RangeSearch = RangeSearch()) -> None:
        super().__init__(bits, role)
        if self.bits < 2:
            raise ValueError("V-2SF needs at least 2 bits (one region bit)")
        if k_max < 1:
            raise ValueError(f"V-2SF k_max must be >= 1, got {k_max}")
        self.k_max = int(k_max)
        self.search = search
        self.levels = 2 ** (self.bits - 1)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.register_buffer("shift", torch.ones(()))

    def _candidates(self, x2d: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        lo = torch.clamp(x2d.amin(dim=1), max=0.0)
        tops = [hi for _, hi in candidate_ranges(x2d, self.search)]
        if self.search.method != "minmax":
            tops.append(x2d.amax(dim=1))
        cands = []
        for top in tops:
            top = torch.where(top > 0, top, torch.ones_like(top))
            cands += [self._params(top, lo, k) for k in range(1, self.k_max + 1)]
        return cands

    def _params(self, top: torch.Tensor, lo: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """(scale, zero point, shift) for coarse top `top` (> 0), data minimum `lo` <= 0, ratio 2^k."""
        scale = top / (2.0**k * (self.levels - 1))
        zero = torch.clamp(torch.round(-lo / scale), 0, self.levels - 1)
        return scale, zero, torch.full_like(top, float(k))

    def _fit(self, x: torch.Tensor) -> None:
        x2d = subsample(x.float().reshape(1, -1), self.search.max_samples)
        scale, zero, shift = pick_by_mse(
            x2d, self._candidates(x2d),
            lambda v, s, z, k: v2sf_fake_quant(v, s[:, None], z[:, None], k[:, None], self.levels))
        self.set_params(scale[0], zero[0], shift[0])

    def set_params(self, scale: torch.Tensor, zero_point: torch.Tensor, shift: torch.Tensor) -> None:
        dev = self.scale.device
        self.scale = scale.detach().clone().float().to(dev)
        self.zero_point = zero_point.detach().clone().float().to(dev)
        self.shift = shift.detach().clone().float().to(dev)
        self.calibrated = True
        self.version += 1

    # -- the Hessian-guided search's protocol (ptqbench.algorithms.hessian_search) --
    def search_params(self) -> tuple[torch.Tensor, ...]:
        return self.scale.clone(), self.zero_point.clone(), self.shift.clone()

    def apply_search_params(self, params: tuple[torch.Tensor, ...]) -> None:
        self.set_params(*params)

    def search_candidates(self, x: torch.Tensor, alphas: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Coordinate candidates around the current parameters: the coarse top alpha x max(x) at
        the current k, and the current top at every k in 1..k_max."""
        x = x.detach().float()
        lo, mx = torch.clamp(x.min(), max=0.0), x.max()
        k_now = int(self.shift)
        top_now = self.scale * 2.0**k_now * (self.levels - 1)
        pairs = [(a * mx, k_now) for a in alphas] + [(top_now, k) for k in range(1, self.k_max + 1)]
        return [self._params(top if float(top) > 0 else torch.ones(()), lo, k) for top, k in pairs]

    @property
    def threshold(self) -> float:
        """Values at or above this go to the coarse region."""
        return float((self.levels - 0.5 - self.zero_point) * self.scale)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return v2sf_fake_quant(x, self.scale, self.zero_point, self.shift, self.levels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes in [0, 2^b - 1]: region bit (the top bit) times L plus the level."""
        coarse = x >= self.threshold
        fine_l = torch.clamp(torch.round(x / self.scale) + self.zero_point, 0, self.levels - 1)
        coarse_l = torch.clamp(torch.round(x / (self.scale * torch.exp2(self.shift))), 0, self.levels - 1)
        return torch.where(coarse, coarse_l + self.levels, fine_l)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        coarse = codes >= self.levels
        lv = codes - coarse.float() * self.levels
        return torch.where(coarse, lv * self.scale * torch.exp2(self.shift), (lv - self.zero_point) * self.scale)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor", range=self.search.method, shift=int(self.shift) if self.calibrated else None,
                 threshold=self.threshold if self.calibrated else None)
        return d


@register_kind("o2sf", options=O2SFOptions, search=True)
class OutlierTwoScaleQuantizer(Quantizer):
    """O-2SF: one (s, z) for the ordinary channels (last axis), s * 2^k shared by outlier channels.

    Args:
        bits: code width (unsigned, asymmetric).
        role: post_ln.
        ratios: candidate outlier thresholds, as multiples of the median channel range.
        k_max: largest power-of-two ratio exponent tried for the outlier scale.
        search: range search for the ordinary channels' per-tensor range.
    """

    kind = "o2sf"

    def __init__(self, bits: int, role: str, ratios: Sequence[float] = (2.0, 4.0, 8.0, 16.0), k_max: int = 6,
                 search: RangeSearch = RangeSearch()) -> None:
        super().__init__(bits, role)
        if not ratios or any(r <= 1.0 for r in ratios):
            raise ValueError(f"O-2SF outlier ratios must be > 1, got {list(ratios)}")
        self.ratios = tuple(float(r) for r in ratios)
        self.k_max = int(k_max)
        self.search = search
        self.qmin, self.qmax = qrange(self.bits, False)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.register_buffer("outlier_scale", torch.ones(()))
        self.register_buffer("outlier_zero_point", torch.zeros(()))
        self.register_buffer("outlier_mask", torch.zeros(0, dtype=torch.bool))
        self.ratio = None

    def _outlier_params(self, xo: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared outlier scale s * 2^k and centred zero point, k by MSE on the outlier data."""
        lo, hi = xo.min(), xo.max()
        cands = []
        for k in range(1, self.k_max + 1):
            s = scale * 2.0**k
            z = torch.clamp(torch.round((self.qmax + self.qmin) / 2 - (lo + hi) / (2 * s)), self.qmin, self.qmax)
            cands.append((s.reshape(1), z.reshape(1)))
        s, z = pick_by_mse(xo.reshape(1, -1), cands, lambda v, s, z: fake_quant(v, s[:, None], z[:, None], self.qmin, self.qmax))
        return s[0], z[0]

    def _fit_ratio(self, x2: torch.Tensor, rng: torch.Tensor, ratio: float):
        mask = rng > ratio * rng.median()
        if bool(mask.all()):
            mask = torch.zeros_like(mask)
        normal = subsample(x2[:, ~mask].reshape(1, -1), self.search.max_samples)
        s, z = fit_rows(normal, self.bits, False, self.search)
        s, z = s[0], z[0]
        if mask.any():
            so, zo = self._outlier_params(x2[:, mask], s)
        else:
            so, zo = s, z
        return mask, s, z, so, zo

    def _fit(self, x: torch.Tensor) -> None:
        x2 = x.float().reshape(-1, x.shape[-1])
        rng = x2.amax(0) - x2.amin(0)
        sample = subsample(x2.t(), self.search.max_samples).t()
        best, best_err = None, None
        for ratio in self.ratios:
            fit = self._fit_ratio(x2, rng, ratio)
            err = float((self._fake_two_scale(sample, *fit) - sample).pow(2).mean())
            if best_err is None or err < best_err:
                best, best_err, self.ratio = fit, err, ratio
        self.outlier_mask, self.scale, self.zero_point, self.outlier_scale, self.outlier_zero_point = best

    # -- the Hessian-guided search's protocol (ptqbench.algorithms.hessian_search) --
    def search_params(self) -> tuple[Any, ...]:
        return (self.outlier_mask.clone(), self.scale.clone(), self.zero_point.clone(), self.outlier_scale.clone(),
                self.outlier_zero_point.clone(), self.ratio)

    def apply_search_params(self, params: tuple[Any, ...]) -> None:
        mask, s, z, so, zo, self.ratio = params
        self.outlier_mask, self.scale, self.zero_point, self.outlier_scale, self.outlier_zero_point = (
            t.detach().clone().to(self.scale.device) for t in (mask, s, z, so, zo))
        self.calibrated = True
        self.version += 1

    def search_candidates(self, x: torch.Tensor, alphas: torch.Tensor) -> list[tuple[Any, ...]]:
        """Coordinate candidates around the current parameters: the ordinary channels' range
        scaled by each alpha (outlier scale re-fitted by MSE on the outliers), and the MSE fit of
        every outlier ratio."""
        x2 = x.detach().float().reshape(-1, x.shape[-1])
        mask = self.outlier_mask
        normal = x2[:, ~mask] if mask.numel() else x2
        lo, hi = normal.min().reshape(1), normal.max().reshape(1)
        cands: list[tuple[Any, ...]] = []
        for a in alphas:
            s, z = params_from_range(a * lo, a * hi, self.bits, False)
            so, zo = self._outlier_params(x2[:, mask], s[0]) if mask.numel() and mask.any() else (s[0], z[0])
            cands.append((mask, s[0], z[0], so, zo, self.ratio))
        rng = x2.amax(0) - x2.amin(0)
        cands += [(*self._fit_ratio(x2, rng, r), r) for r in self.ratios]
        return cands

    def _fake_two_scale(self, x, mask, s, z, so, zo) -> torch.Tensor:
        sc = torch.where(mask, so, s)
        zc = torch.where(mask, zo, z)
        return fake_quant(x, sc, zc, self.qmin, self.qmax)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self._fake_two_scale(x, self.outlier_mask, self.scale, self.zero_point, self.outlier_scale, self.outlier_zero_point)

    @property
    def shift(self) -> int:
        """k of the outlier scale s * 2^k."""
        return int(round(float(torch.log2(self.outlier_scale / self.scale))))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor+outlier_channels", range=self.search.method)
        if self.calibrated:
            d.update(outlier_channels=int(self.outlier_mask.sum()), shift=self.shift, outlier_ratio=self.ratio)
        return d
