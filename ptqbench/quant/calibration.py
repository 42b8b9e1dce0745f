"""Calibration passes and switches over all quantizers of a model."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn
from ptqbench.progress import progress

from ptqbench.quant.base import Quantizer


def quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """Every quantizer in `model`, by dotted module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Quantizer)}


def set_quant_enabled(model: nn.Module, weights: bool = True, activations: bool = True) -> None:
    """Turn weight and activation quantizers on or off (off = FP pass-through)."""
    for q in quantizers(model).values():
        q.enabled = weights if q.role == "weight" else activations


@contextlib.contextmanager
def switched(qs: Iterable[Quantizer], enabled: bool) -> Iterator[None]:
    """Set `enabled` on the given quantizers inside the block; restores each one's state after."""
    qs = list(qs)
    saved = [q.enabled for q in qs]
    for q in qs:
        q.enabled = enabled
    try:
        yield
    finally:
        for q, e in zip(qs, saved):
            q.enabled = e


def quant_disabled(model: nn.Module) -> contextlib.AbstractContextManager:
    """Run the patched model in floating point inside the block; restores each quantizer's state."""
    return switched(quantizers(model).values(), False)


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, desc: str = "calibrate") -> int:
    """One forward pass over the calibration batch; every enabled, uncalibrated quantizer fits
    itself on the first tensor it sees, in forward order, with upstream quantizers already active
    (so later layers calibrate on quantized inputs, as in RepQ-ViT). Returns how many quantizers
    were calibrated.

    The whole batch goes through at once because each quantizer's range search needs all of its
    calibration data together; `RangeSearch.max_samples` bounds the search cost.
    """
    pending = [q for q in quantizers(model).values() if q.enabled and not q.calibrated]
    if not pending:
        return 0
    bar = progress(total=len(pending), desc=desc, unit="quantizer")
    hooks = []

    def tick(*_: object) -> None:  # a forward hook must return None, or it replaces the output
        if bar.n < bar.total:
            bar.update(1)

    for q in pending:
        q.auto_calibrate = True
        hooks.append(q.register_forward_hook(tick))
    try:
        model(images)
    finally:
        for q in pending:
            q.auto_calibrate = False
        for h in hooks:
            h.remove()
        bar.close()
    return sum(q.calibrated for q in pending)
