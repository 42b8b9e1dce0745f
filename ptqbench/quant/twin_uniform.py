"""Twin uniform quantization (PTQ4ViT, ECCV 2022) for post-softmax and post-GELU activations.

A b-bit code is one region bit plus b-1 level bits (L = 2^(b-1) levels per region), as in the
released PTQ4ViT code:

- post-softmax (`mode="softmax"`): R2 = [split, 1] with the fixed step 1/(L-1) (it reaches 1,
  the largest probability), R1 = [0, split) with the step split/(L-1); split = 2^-m, so the two
  steps differ by the power of two 2^m (PTQ4ViT's Delta_R2 = 2^m Delta_R1 constraint).
- post-GELU (`mode="gelu"`): negative values with the step |min|/(L-1) (GELU's minimum is
  -0.17), non-negative values with their own step `pos_scale` (L-1 levels above 0).

Two options give the released code's arithmetic (`quant_layers/matmul.py:SoSPTQSL*.quant_input_A`,
`quant_layers/linear.py:PostGeluPTQSL*`):
- `sum_regions` (softmax): the code adds the two regions' values, each of x clamped to its region,
  instead of selecting one: above the split the low region contributes the split itself, and
  below it the high region contributes round(split (L-1)) / (L-1) (0 for split < 1/(2(L-1))).
- `gelu_neg_step` > 0 (GELU): the negative step is fixed at gelu_neg_step / L with L negative
  codes (released: 0.16997124254703522, GELU's minimum), not fitted to the data.

`_fit` picks m (softmax, m in 0..m_max) or the positive range (GELU, top in {max, search
percentiles}) by MSE; PTQ4ViT's Hessian-guided search (ptqbench.algorithms.hessian_search) then
overrides them through `candidates()` / `apply()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ptqbench.quant.base import Quantizer
from ptqbench.quant.kinds import register_kind
from ptqbench.quant.ranges import RangeSearch, candidate_ranges, subsample
from ptqbench.quant.uniform import fake_quant, select_below

TWIN_MODES = ("softmax", "gelu")


def _two_region_fake_quant(x: torch.Tensor, boundary: torch.Tensor, s_below: torch.Tensor, s_above: torch.Tensor,
                           qmin: int, qmax: int) -> torch.Tensor:
    """Uniform fake quantization (zero point 0) with step `s_below` where x < boundary, else
    `s_above`: one division, rounding, clamp and product with a per-element step, instead of
    quantizing the whole tensor with each step and selecting (each element goes through exactly
    the operations of its own region's formula). Inference only."""
    s = select_below(x, float(boundary), float(s_below), float(s_above))
    y = torch.div(x, s)
    y.round_().clamp_(qmin, qmax)
    return y.mul_(s)


def _fast(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """True when the per-element-step path applies: no autograd, per-tensor parameters, eager mode
    (a compiled graph fuses the two-branch formula by itself)."""
    return (not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and x.requires_grad)
            and all(p.dim() == 0 for p in params))


def twin_softmax_fake_quant(x: torch.Tensor, split: torch.Tensor, levels: int, sum_regions: bool = False) -> torch.Tensor:
    high_scale = torch.full_like(split, 1.0 / (levels - 1))
    if sum_regions and _fast(x, split):
        # each region's clamped copy is the buffer its fake quantization is written over
        bound, zero = float(split), torch.zeros_like(split)
        high = fake_quant(torch.clamp(x, min=bound, max=1.0), high_scale, zero, 0, levels - 1, overwrite=True)
        return high.add_(fake_quant(torch.clamp(x, min=0.0, max=bound), split / (levels - 1), zero, 0, levels - 1,
                                    overwrite=True))
    if sum_regions:
        zero = torch.zeros_like(split)
        high = fake_quant(torch.clamp(x, min=split, max=1.0), high_scale, zero, 0, levels - 1)
        return high.add_(fake_quant(torch.clamp(x, min=0.0, max=split), split / (levels - 1), zero, 0, levels - 1))
    if _fast(x, split):
        return _two_region_fake_quant(x, split, split / (levels - 1), high_scale, 0, levels - 1)
    zero = torch.zeros_like(split)
    low = fake_quant(x, split / (levels - 1), zero, 0, levels - 1)
    high = fake_quant(x, high_scale, zero, 0, levels - 1)
    return torch.where(x < split, low, high)


def twin_gelu_fake_quant(x: torch.Tensor, neg_scale: torch.Tensor, pos_scale: torch.Tensor, levels: int,
                         neg_levels: int | None = None) -> torch.Tensor:
    """`neg_levels`: negative codes -neg_levels..0 (default L-1)."""
    neg_min = -(levels - 1 if neg_levels is None else neg_levels)
    if _fast(x, neg_scale, pos_scale):
        # one clamp [neg_min, L-1] serves both regions: a negative x has a code <= 0, a
        # non-negative one a code >= 0, so each region's other bound is never reached
        return _two_region_fake_quant(x, torch.zeros(()), neg_scale, pos_scale, neg_min, levels - 1)
    zero = torch.zeros_like(pos_scale)
    pos = fake_quant(x, pos_scale, zero, 0, levels - 1)
    neg = fake_quant(x, neg_scale, torch.zeros_like(neg_scale), neg_min, 0)
    return torch.where(x < 0, neg, pos)


@dataclass(frozen=True)
class TwinOptions:
    """m_max: softmax mode: the largest split exponent tried (split = 2^-m).
    sum_regions: softmax mode: the released code's sum of the two regions (module docstring).
    gelu_neg_step: GELU mode: > 0 fixes the negative step at this / L with L negative codes."""

    m_max: int = 19
    sum_regions: bool = False
    gelu_neg_step: float = 0.0


@register_kind("twin_softmax", options=TwinOptions, search=True, preset={"mode": "softmax"})
@register_kind("twin_gelu", options=TwinOptions, search=True, preset={"mode": "gelu"})
class TwinUniformQuantizer(Quantizer):
    """PTQ4ViT's twin uniform quantizer; see the module docstring.

    Args:
        bits: code width including the region bit (>= 2).
        role: post_softmax or post_gelu.
        mode: "softmax" or "gelu".
        m_max: softmax: largest split exponent tried (split = 2^-m); PTQ4ViT searches 0..19.
        search: GELU: the positive range candidates (`minmax`: the maximum only).
    """

    kind = "twin_uniform"

    def __init__(self, bits: int, role: str, mode: str, m_max: int = 19, sum_regions: bool = False,
                 gelu_neg_step: float = 0.0, search: RangeSearch = RangeSearch()) -> None:
        super().__init__(bits, role)
        if gelu_neg_step < 0:
            raise ValueError(f"gelu_neg_step={gelu_neg_step}; give 0 (fitted) or a positive fixed range")
        self.sum_regions = bool(sum_regions)
        self.gelu_neg_step = float(gelu_neg_step)
        if mode not in TWIN_MODES:
            raise ValueError(f"twin uniform mode {mode!r}; choose one of {TWIN_MODES}")
        if self.bits < 2:
            raise ValueError("twin uniform quantization needs at least 2 bits (one region bit)")
        self.mode = mode
        self.m_max = int(m_max)
        self.search = search
        self.levels = 2 ** (self.bits - 1)
        self.register_buffer("split", torch.ones(()))      # softmax
        self.register_buffer("neg_scale", torch.ones(()))  # gelu
        self.register_buffer("pos_scale", torch.ones(()))  # gelu

    # -- the search interface (calibration, and the Hessian-guided search's protocol) ------------
    def candidates(self, x: torch.Tensor, n: int | None = None, alphas: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        """Parameter sets to try on data `x`: softmax: split = 2^-m for m in 0..min(m_max, n-1);
        GELU: positive step alpha * max / (L-1) for each alpha (or the range-search tops)."""
        if self.mode == "softmax":
            m_hi = self.m_max if n is None else min(self.m_max, n - 1)
            return [{"split": torch.tensor(2.0**-m)} for m in range(m_hi + 1)]
        x2d = subsample(x.detach().float().reshape(1, -1), self.search.max_samples)
        if self.gelu_neg_step > 0:
            neg = torch.tensor(self.gelu_neg_step / self.levels)
        else:
            neg = torch.clamp(-x2d.min(), min=1e-8) / (self.levels - 1)
        top = torch.clamp(x2d.max(), min=1e-8)
        if alphas is not None:
            tops = [top * a for a in alphas]
        else:
            tops = [hi[0] for _, hi in candidate_ranges(x2d, self.search)] + [top]
        return [{"neg_scale": neg, "pos_scale": torch.clamp(t, min=1e-8) / (self.levels - 1)} for t in tops]

    def search_candidates(self, x: torch.Tensor, alphas: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The Hessian-guided search's candidates: as many as `alphas` (softmax: that many splits)."""
        return self.candidates(x, n=len(alphas), alphas=alphas)

    def search_params(self) -> dict[str, torch.Tensor]:
        return {"split": self.split.clone(), "neg_scale": self.neg_scale.clone(), "pos_scale": self.pos_scale.clone()}

    def apply_search_params(self, params: dict[str, torch.Tensor]) -> None:
        """Install searched parameters (not named `apply`: that would shadow nn.Module.apply, which
        e.g. mmengine's BaseModel.to calls on every submodule)."""
        for k, v in params.items():
            setattr(self, k, v.detach().clone().float().to(self.split.device).reshape(()))
        self.calibrated = True
        self.version += 1

    def _fake(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.mode == "softmax":
            return twin_softmax_fake_quant(x, p["split"], self.levels, self.sum_regions)
        return twin_gelu_fake_quant(x, p["neg_scale"], p["pos_scale"], self.levels,
                                    self.levels if self.gelu_neg_step > 0 else None)

    def _fit(self, x: torch.Tensor) -> None:
        if self.mode == "softmax" and (x < 0).any():
            raise ValueError(f"twin uniform softmax quantizer {self.qname!r} needs non-negative input")
        x2d = subsample(x.float().reshape(1, -1), self.search.max_samples)
        cands = self.candidates(x2d)  # subsampling x2d again would return it as is: one draw, not two
        errs = [float((self._fake(x2d, c) - x2d).pow(2).mean()) for c in cands]
        self.apply_search_params(cands[min(range(len(cands)), key=errs.__getitem__)])  # ties keep the first

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self._fake(x, {"split": self.split, "neg_scale": self.neg_scale, "pos_scale": self.pos_scale})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes in [0, 2^b - 1]: region (top bit) times L plus the level magnitude."""
        if self.sum_regions or self.gelu_neg_step > 0:
            raise ValueError(f"{self.qname!r}: the released arithmetic (sum_regions / gelu_neg_step) has no "
                             "region-bit code here; encode needs the defaults")
        L = self.levels
        if self.mode == "softmax":
            high = x >= self.split
            low_l = torch.clamp(torch.round(x / (self.split / (L - 1))), 0, L - 1)
            high_l = torch.clamp(torch.round(x * (L - 1)), 0, L - 1)
            return torch.where(high, high_l + L, low_l)
        neg = x < 0
        neg_l = torch.clamp(torch.round(-x / self.neg_scale), 0, L - 1)
        pos_l = torch.clamp(torch.round(x / self.pos_scale), 0, L - 1)
        return torch.where(neg, neg_l + L, pos_l)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        L = self.levels
        second = codes >= L
        lv = codes - second.float() * L
        if self.mode == "softmax":
            return torch.where(second, lv / (L - 1), lv * self.split / (L - 1))
        return torch.where(second, -lv * self.neg_scale, lv * self.pos_scale)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(granularity="tensor", mode=self.mode)
        if self.calibrated:
            if self.mode == "softmax":
                d["split"] = float(self.split)
            else:
                d.update(neg_scale=float(self.neg_scale), pos_scale=float(self.pos_scale))
        return d
