"""The fake-quantizer contract every quantizer in ptqbench follows.

A quantizer is an `nn.Module` that maps a float tensor to its quantize-dequantize image. It is
*calibrated* once from data (`calibrate`) and then applies fixed parameters. Calibration is lazy:
with `auto_calibrate` set (`ptqbench.quant.calibration.calibrate`) an uncalibrated quantizer fits
itself on the first tensor it sees, so the model calibrates in forward order, with upstream
quantizers already active (RepQ-ViT's protocol), in one pass or streamed unit by unit.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ptqbench.errors import CalibrationError
from ptqbench.quant.streamed_search import EachInput


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round, passing gradients straight through (learnable quantizers of block reconstruction)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return x + (torch.round(x) - x).detach()
    return torch.round(x)


# What a quantizer can train during block reconstruction: "scale" (step sizes, LSQ-style),
# "interval" (learned clipping bounds).
TRAINABLE_GROUPS = ("scale", "interval")


class Quantizer(nn.Module):
    """Base fake-quantizer.

    Attributes:
        bits: code width.
        role: what tensor this quantizer sees (see `ptqbench.quant.roles`).
        enabled: False makes the quantizer the identity (FP pass-through).
        calibrated: True once parameters have been fitted.
        auto_calibrate: set by the calibration context; an uncalibrated quantizer then fits itself
            on the next tensor instead of raising.
        version: bumped on every (re)calibration so cached quantized weights know to refresh.
        qname: dotted module name, filled in by the model adapter, used in messages and records.
    """

    kind = "base"

    def __init__(self, bits: int, role: str) -> None:
        super().__init__()
        if not 1 <= int(bits) <= 16:
            raise ValueError(f"{self.kind} quantizer bits must be in 1..16, got {bits}")
        self.bits = int(bits)
        self.role = role
        self.enabled = True
        self.calibrated = False
        self.auto_calibrate = False
        self.version = 0
        self.qname = ""
        # QDrop during block reconstruction: (probability of the quantized value, generator); each
        # element is then quantized with that probability and passed through FP otherwise
        self.drop: Optional[tuple[float, torch.Generator]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if not self.calibrated:
            if not self.auto_calibrate:
                raise CalibrationError(
                    f"quantizer {self.qname or self.role!r} ({self.kind}, role {self.role}) was used "
                    "before calibration; run the method's quantize() (or ptqbench.quant.calibrate) first"
                )
            self.calibrate(x)
        if self.drop is not None and torch.is_grad_enabled():
            keep_prob, gen = self.drop
            # laid out like x (strides kept, as torch.rand_like): the released QDrop ports draw
            # their masks so, and with the same generator state the masks are then the same
            keep = torch.empty_like(x, device="cpu").uniform_(generator=gen).to(x.device) < keep_prob
            return torch.where(keep, self.quantize(x), x)
        return self.quantize(x)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Fit the quantization parameters on `x`; refuses NaN/inf with a message naming the tensor.
        An input the quantizer would fit streamed is read in slices (`_slices`): the same search
        as streamed calibration runs, whichever pass gave the input."""
        x = self._finite(x)
        if self.streams(x.numel(), x):
            self._fit_streamed(self._slices(x), x.numel())
        else:
            self._fit(x)
        self.calibrated = True
        self.version += 1

    def streams(self, numel: int, example: torch.Tensor) -> bool:
        """Whether this quantizer fits on an input of `numel` values read chunk by chunk
        (`calibrate_streamed`) rather than whole; `example` is one chunk (its shape gives the
        groups). Streamed calibration asks before it holds the input, so only a quantizer whose
        search needs bounded memory says yes."""
        return False

    @torch.no_grad()
    def calibrate_streamed(self, each_input: EachInput, numel: int) -> None:
        """`calibrate` on an input of `numel` values given as chunks, read as often as the fit needs
        (`ptqbench.quant.streamed_search`); only where `streams` said so."""
        self._fit_streamed(lambda fn: each_input(lambda chunk: fn(self._finite(chunk))), numel)
        self.calibrated = True
        self.version += 1

    def _finite(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise CalibrationError(
                f"{bad} non-finite values (NaN/inf) reached quantizer {self.qname or self.role!r} "
                f"(role {self.role}) during calibration; the model or its input is broken upstream "
                "(check the checkpoint, the input normalisation, and any earlier reparameterization)"
            )
        return x

    def reset(self) -> None:
        """Forget the fitted parameters (e.g. after the weights they were fitted on changed)."""
        self.calibrated = False
        self.version += 1

    def _fit(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_streamed(self, each_input: EachInput, numel: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError(f"{self.kind} quantizers fit on their whole input")

    def _slices(self, x: torch.Tensor) -> EachInput:  # pragma: no cover - abstract
        """A whole input read as the chunks `_fit_streamed` takes (only where `streams` says yes)."""
        raise NotImplementedError(f"{self.kind} quantizers fit on their whole input")

    def quantize(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def see_matmul_operand(self, other: torch.Tensor, left: bool) -> None:
        """Called by `QuantMatMul` before this quantizer quantizes its operand of a matmul: `other`
        is the other (float) operand, `left` says whether this quantizer's operand is the left one.
        A quantizer whose calibration measures the product's error keeps it; the default ignores it."""

    def start_training(self, group: str) -> list[nn.Parameter]:
        """Make the parameters this quantizer trains under `group` (one of TRAINABLE_GROUPS) trainable
        and return them; [] when it trains none under that group. Block reconstruction calls this
        for what its `learn` asks, then `stop_training()`."""
        return []

    def stop_training(self) -> None:
        """Freeze what `start_training` made trainable (parameters become constants again)."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the run record's per-layer quantizer map."""
        return {"kind": self.kind, "bits": self.bits, "role": self.role, "enabled": self.enabled}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, role={self.role}, enabled={self.enabled}, calibrated={self.calibrated}"
