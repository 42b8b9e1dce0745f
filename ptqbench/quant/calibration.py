"""Calibration passes and switches over all quantizers of a model."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence

import torch
from torch import nn

from ptqbench.errors import CalibrationError
from ptqbench.progress import progress
from ptqbench.quant.base import Quantizer
from ptqbench.quant.modules import drop_cached_weights
from ptqbench.quant.roles import WEIGHT
from ptqbench.quant.streamed_search import EachInput

# Images per chunk of streamed calibration. A chunk's pass through one unit is the transient memory
# on top of the captured quantizer input (ViT-B, 8 images: ~50 MB of attention maps); larger chunks
# run fewer, larger matrix products (each quantizer of a unit costs one partial pass over all
# chunks). 8 is also the chunk size of the other streamed passes (ERQ, GPTQ). Results do not depend
# on it: every quantizer fits on its whole input, joined from the chunks, or read chunk by chunk
# when it fits streamed (`Quantizer.streams`).
CALIBRATION_CHUNK = 8


class UnitLike(Protocol):
    """One step of a model's forward pass (`ptqbench.models.structure.Unit`): running the units in
    order on the images reproduces the model's forward."""

    forward: Callable[[torch.Tensor], torch.Tensor]


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
def calibrate(model: nn.Module, images: torch.Tensor, desc: str = "calibrate",
              units: Optional[Sequence[UnitLike]] = None, chunk_size: int = CALIBRATION_CHUNK) -> int:
    """Fit every enabled, uncalibrated quantizer of `model` on the calibration images, in forward
    order, with upstream quantizers already calibrated and active (so later layers calibrate on
    quantized inputs, as in RepQ-ViT). Returns how many quantizers were calibrated.

    With `units` (the model's forward as a sequence of steps, `QuantizedModel.units`) the images
    stream through in chunks of `chunk_size` (`calibrate_streamed`): memory holds one unit's input
    and one quantizer's input for all images instead of the whole forward pass of the batch, and
    every quantizer gets exactly the tensor the one pass would give it. A quantizer that fits
    streamed (uniform and log-sqrt2 above `RangeSearch.max_samples` values) is never given its
    input whole: it reads it chunk by chunk, so memory stays flat in the number of images.
    Without units (models whose family gives none, e.g. the mmdet detectors, or a calibration input that is not one
    image tensor) the whole batch goes through at once (`calibrate_one_pass`).
    """
    if units:
        return calibrate_streamed(model, units, images, desc, chunk_size)
    return calibrate_one_pass(model, images, desc)


def _pending(model: nn.Module) -> list[Quantizer]:
    return [q for q in quantizers(model).values() if q.enabled and not q.calibrated]


def _ticking(pending: list[Quantizer], desc: str):
    bar = progress(total=len(pending), desc=desc, unit="quantizer")

    def tick(*_: object) -> None:  # a forward hook must return None, or it replaces the output
        if bar.n < bar.total:
            bar.update(1)

    return bar, tick


@torch.no_grad()
def calibrate_one_pass(model: nn.Module, images: Any, desc: str = "calibrate") -> int:
    """One forward pass over the whole calibration batch: every pending quantizer fits itself on
    the first tensor it sees (`Quantizer.auto_calibrate`)."""
    pending = _pending(model)
    if not pending:
        return 0
    bar, tick = _ticking(pending, desc)
    hooks = []
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


class _Reached(Exception):
    """Stops a unit's forward once the quantizer being calibrated has received its input."""


class _Capture:
    """Forward pre-hooks on the pending quantizers of a model for one pass over the chunks: a
    weight quantizer is fitted where the forward reaches it (its input, the weight, is the same for
    every image); the first pending activation quantizer reached becomes the target, its input
    (and the other matmul operand, for quantizers that calibrate on it) is kept for each chunk and
    the forward stops there."""

    def __init__(self, pending: list[Quantizer], on_fit: Callable[[Quantizer], None], images_per_first_chunk: float
                 ) -> None:
        self.target: Optional[Quantizer] = None
        # set on the first chunk when the target's whole input (first chunk's values x images per
        # first chunk's images) is one it fits streamed: nothing is kept, the capture pass stops
        self.streamed_numel: Optional[int] = None
        self._scale = images_per_first_chunk
        self.inputs: list[torch.Tensor] = []
        self.operands: list[tuple[torch.Tensor, bool]] = []
        self._seen: dict[int, tuple[torch.Tensor, bool]] = {}
        self._on_fit = on_fit
        self._handles = [q.register_forward_pre_hook(self._pre_hook) for q in pending]
        self._wrapped = [q for q in pending if _sees_operands(q)]
        for q in self._wrapped:  # an instance attribute shadows the method until close()
            q.see_matmul_operand = self._recorder(q)

    def _recorder(self, q: Quantizer) -> Callable[[torch.Tensor, bool], None]:
        def see(other: torch.Tensor, left: bool) -> None:
            if q.enabled and not q.calibrated:
                self._seen[id(q)] = (other.detach(), left)
        return see

    def _pre_hook(self, q: Quantizer, args: tuple) -> None:
        if q.calibrated or not q.enabled:
            return
        x = args[0]
        if q.role == WEIGHT:
            q.calibrate(x)
            self._on_fit(q)
            return
        if self.target is None:
            self.target = q
            numel = round(x.numel() * self._scale)
            if not _sees_operands(q) and q.streams(numel, x):
                self.streamed_numel = numel
                raise _Reached
        elif q is not self.target:
            raise CalibrationError(
                f"quantizer {q.qname or q.role!r} was reached before {self.target.qname or self.target.role!r} on a "
                "later calibration chunk: the model's forward order depends on the data, which streamed "
                "calibration cannot reproduce; pass units=None to calibrate() for one pass")
        self.inputs.append(x.detach())
        if id(q) in self._seen:
            self.operands.append(self._seen.pop(id(q)))
        raise _Reached

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        for q in self._wrapped:
            del q.see_matmul_operand


def _sees_operands(q: Quantizer) -> bool:
    """Whether `q` overrides `see_matmul_operand` (calibrates on the other matmul operand too)."""
    return type(q).see_matmul_operand is not Quantizer.see_matmul_operand


def _fit_captured(q: Quantizer, inputs: list[torch.Tensor], operands: list[tuple[torch.Tensor, bool]]) -> None:
    """Calibrate `q` on its chunks' inputs joined along the batch axis: the tensor the one pass
    gives it (chunks are whole images; the forward treats images independently)."""
    x = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
    inputs.clear()
    q.auto_calibrate = True
    try:
        if operands:
            other = operands[0][0] if len(operands) == 1 else torch.cat([o for o, _ in operands])
            operands_left = operands[0][1]
            operands.clear()
            q.see_matmul_operand(other, operands_left)
            del other
        q.calibrate(x)
    finally:
        q.auto_calibrate = False


@torch.no_grad()
def calibrate_streamed(model: nn.Module, units: Sequence[UnitLike], images: torch.Tensor, desc: str = "calibrate",
                       chunk_size: int = CALIBRATION_CHUNK) -> int:
    """`calibrate` unit by unit over chunks of images. Inside a unit the pending quantizers are
    fitted one at a time in forward order: the chunks run through the unit until the next pending
    quantizer, its input is captured on every chunk, joined and fitted; then the next one. The
    unit's outputs (everything upstream calibrated and active) are the next unit's input. A unit
    done, its layers' cached fake-quantized weights are freed (the pass does not come back to it;
    evaluation refills them), so at most one unit's are held.

    `units` must reproduce `model(images)` when run in order (`ptqbench.models.units`)."""
    if not isinstance(images, torch.Tensor):
        raise CalibrationError(f"streamed calibration needs the calibration images as one tensor, got "
                               f"{type(images).__name__}; pass units=None for one pass")
    if chunk_size < 1:
        raise ValueError(f"calibration chunk size must be >= 1, got {chunk_size}")
    pending = _pending(model)
    if not pending:
        return 0
    bar, tick = _ticking(pending, desc)
    chunks = list(torch.split(images, chunk_size))
    scale = images.shape[0] / chunks[0].shape[0]
    try:
        for unit in units:
            chunks = _calibrate_unit(unit, chunks, pending, tick, scale)
            drop_cached_weights(model)
    finally:
        bar.close()
    return sum(q.calibrated for q in pending)


def _calibrate_unit(unit: UnitLike, chunks: list[torch.Tensor], pending: list[Quantizer],
                    tick: Callable[..., None], images_per_first_chunk: float) -> list[torch.Tensor]:
    """Fit the pending quantizers `unit` reaches, in order; returns the unit's outputs."""
    while True:
        waiting = [q for q in pending if q.enabled and not q.calibrated]
        if not waiting:
            return [unit.forward(c) for c in chunks]
        cap = _Capture(waiting, tick, images_per_first_chunk)
        first_out = None
        try:
            for i, c in enumerate(chunks):
                try:
                    out = unit.forward(c)
                except _Reached:
                    if cap.streamed_numel is not None:
                        break
                    continue
                if cap.target is not None:
                    raise CalibrationError(
                        f"quantizer {cap.target.qname or cap.target.role!r} was not reached on calibration chunk {i}: "
                        "the model's forward depends on the data; pass units=None to calibrate() for one pass")
                first_out = out  # no pending activation quantizer in this unit: this is its output
                break
        finally:
            cap.close()
        if cap.target is None:
            rest = [unit.forward(c) for c in chunks[1:]]
            return [first_out, *rest]
        if cap.streamed_numel is not None:
            cap.target.calibrate_streamed(_inputs_of(cap.target, unit, chunks), cap.streamed_numel)
        else:
            _fit_captured(cap.target, cap.inputs, cap.operands)
        tick()


def _inputs_of(q: Quantizer, unit: UnitLike, chunks: list[torch.Tensor]) -> EachInput:
    """A pass over `q`'s input chunk by chunk: each chunk runs through `unit` until it reaches `q`
    (everything before `q` is calibrated), hands `q`'s input on and stops there."""
    def each(fn: Callable[[torch.Tensor], None]) -> None:
        def hand_on(_: nn.Module, args: tuple) -> None:
            fn(args[0].detach())
            raise _Reached
        handle = q.register_forward_pre_hook(hand_on)
        try:
            for i, c in enumerate(chunks):
                try:
                    unit.forward(c)
                except _Reached:
                    continue
                raise CalibrationError(
                    f"quantizer {q.qname or q.role!r} was not reached on calibration chunk {i}: "
                    "the model's forward depends on the data; pass units=None to calibrate() for one pass")
        finally:
            handle.remove()
    return each
