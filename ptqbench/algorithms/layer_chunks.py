"""One layer's FP inputs and output on the calibration images, an image chunk at a time.

A per-layer search that reads its layer's tensors many times (the grid search: a pass per round
and operand) would hold them whole, and they grow with the images: at ViT-B's 128 images fc1's
output alone is 310 MB. `LayerChunks` recomputes them instead, every time they are read: the unit
runs in floating point on one chunk of its input and stops at the layer (`streaming.layer_call`),
so a search holds one chunk's tensors whatever the number of images. Each chunk's tensors are
what a pass of the unit on that chunk gives, as the released AdaLog / APHQ-ViT calibrator runs
the model batch by batch. `HeldChunks` serves tensors that are already whole through the same
interface (tests, and a caller that has them).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Iterator, Optional, Protocol

import torch
from torch import nn

from ptqbench.algorithms.streaming import layer_call, split_chunks
from ptqbench.quant.calibration import quant_disabled

Tensors = tuple[tuple[torch.Tensor, ...], torch.Tensor]  # a chunk's (layer inputs, layer output)


class Chunks(Protocol):
    """A layer's (inputs, output), image chunk by image chunk, in image order; iterable any number
    of times. Dim 0 of every tensor is the images (images x windows in Swin's window attention).
    `shape(i)`: the whole shape of input i."""

    def __iter__(self) -> Iterator[Tensors]: ...

    def shape(self, i: int) -> torch.Size: ...

    def out_shape(self) -> torch.Size: ...

    def transformed(self, fn: Callable[[torch.Tensor], torch.Tensor],
                    as_before: Optional[Callable[[], ContextManager]] = None) -> "Chunks": ...


@dataclass
class Operand:
    """One tensor of a layer's chunks: its whole shape, and a fresh pass over its image chunks."""

    shape: torch.Size
    chunks: Callable[[], Iterable[torch.Tensor]]

    @staticmethod
    def of(x: "torch.Tensor | Operand") -> "Operand":
        return x if isinstance(x, Operand) else Operand(x.shape, lambda: (x,))

    @staticmethod
    def input_of(chunks: Chunks, i: int = 0) -> "Operand":
        return Operand(chunks.shape(i), lambda: (ins[i] for ins, _ in chunks))


@dataclass
class HeldChunks:
    """Whole tensors, served in slices of `size` images."""

    ins: tuple[torch.Tensor, ...]
    out: torch.Tensor
    size: int

    def __iter__(self) -> Iterator[Tensors]:
        for i in range(0, self.out.shape[0], self.size):
            yield tuple(t[i:i + self.size] for t in self.ins), self.out[i:i + self.size]

    def shape(self, i: int) -> torch.Size:
        return self.ins[i].shape

    def out_shape(self) -> torch.Size:
        return self.out.shape

    def transformed(self, fn: Callable[[torch.Tensor], torch.Tensor],
                    as_before: Optional[Callable[[], ContextManager]] = None) -> "HeldChunks":
        """`fn` on input 0; `as_before` is not needed: held tensors were taken before any change."""
        return HeldChunks((fn(self.ins[0]), *self.ins[1:]), self.out, self.size)


@dataclass
class LayerChunks:
    """`layer`'s FP inputs and output when `unit_fn` runs on `x`, recomputed a chunk of `size`
    images at a time on every pass (quantizers of `model` off during the unit's pass).

    `transform`: applied to input 0 of each chunk. `as_before`: a context in which the unit runs
    as it was before a change made since (a reparameterization fold: its layer's search goes on
    with the tensors from before the fold, as if they had been captured then)."""

    unit_fn: Callable[[torch.Tensor], object]
    layer: nn.Module
    x: torch.Tensor
    size: int
    model: nn.Module
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    as_before: Optional[Callable[[], ContextManager]] = None
    _shapes: Optional[list[torch.Size]] = field(default=None, repr=False)

    def _call(self, x: torch.Tensor) -> Tensors:
        with quant_disabled(self.model), (self.as_before() if self.as_before else contextlib.nullcontext()):
            ins, out = layer_call(self.unit_fn, self.layer, x)
        if self.transform is not None:
            ins = (self.transform(ins[0]), *ins[1:])
        assert out is not None
        return ins, out

    def __iter__(self) -> Iterator[Tensors]:
        for chunk in split_chunks(self.x, self.size):
            yield self._call(chunk)

    def shape(self, i: int) -> torch.Size:
        if self._shapes is None:  # one image's pass: dim 0 is images, or images x windows (Swin)
            ins, out = self._call(self.x[:1])
            self._shapes = [torch.Size((t.shape[0] * self.x.shape[0], *t.shape[1:])) for t in (*ins, out)]
        return self._shapes[i]

    def out_shape(self) -> torch.Size:
        self.shape(0)
        assert self._shapes is not None
        return self._shapes[-1]

    def transformed(self, fn: Callable[[torch.Tensor], torch.Tensor],
                    as_before: Optional[Callable[[], ContextManager]] = None) -> "LayerChunks":
        if self.transform is not None:
            raise ValueError("LayerChunks takes one transform")
        return LayerChunks(self.unit_fn, self.layer, self.x, self.size, self.model, fn, as_before, self._shapes)


@contextlib.contextmanager
def parameters_as_saved(saved: list[tuple[nn.Module, str, object]]) -> Iterator[None]:
    """Each (module, attribute, value) of `saved` set inside the block, the current values after it."""
    current = [(mod, name, getattr(mod, name)) for mod, name, _ in saved]
    try:
        for mod, name, value in saved:
            setattr(mod, name, value)
        yield
    finally:
        for mod, name, value in current:
            setattr(mod, name, value)


def snapshot(attributes: list[tuple[nn.Module, str]]) -> list[tuple[nn.Module, str, object]]:
    """Copies of the given attributes (parameters, tensors or None), for `parameters_as_saved`."""
    def copy(v: object) -> object:
        if isinstance(v, nn.Parameter):
            return nn.Parameter(v.detach().clone(), requires_grad=v.requires_grad)
        return v.clone() if isinstance(v, torch.Tensor) else v
    return [(mod, name, copy(getattr(mod, name, None))) for mod, name in attributes]
