"""Stream calibration data through a model unit by unit and accumulate per-layer Gram matrices.

What ERQ and GPTQ need from a layer's calibration inputs is second-order statistics only:

    G = [Q(X), 1]^T [Q(X), 1]      (Gram of the quantized input, with a ones column for the bias)
    C = [Q(X), 1]^T [X, 1]         (cross-Gram of quantized vs float input; ERQ's Aqer)

Both are sums over rows (tokens x images, or conv patches), so they are accumulated chunk by chunk
while the calibration batch streams through one unit (block) at a time. Memory is one unit's
input and output plus (Cin + 1)^2 per layer of that unit, never every layer's activations (the
released ERQ code pickles every Linear's full input and output: 0.9 GB for DeiT-T, 32 images).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.models.structure import Unit
from ptqbench.quant.calibration import switched
from ptqbench.quant.modules import QuantConv2d, QuantLinear, QuantMatMul

WeightLayer = (QuantLinear, QuantConv2d)
QuantLayer = (QuantLinear, QuantConv2d, QuantMatMul)  # what the per-layer searches visit


@contextlib.contextmanager
def hooks_removed_after(handles: list) -> Iterator[None]:
    """Remove the given hook handles when the block ends, however it ends."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def params_frozen(model: nn.Module) -> Iterator[None]:
    """Every parameter of `model` without requires_grad inside the block (each restored after):
    gradient passes that want activation gradients only, and training that enables its own."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, rg in saved:
            p.requires_grad_(rg)


class _Stop(Exception):
    """Ends a unit's forward once a hook has what it came for."""


def quant_layers(module: nn.Module) -> list[nn.Module]:
    """The quantized Linear, Conv2d and MatMul layers inside `module`, in module order."""
    return [m for m in module.modules() if isinstance(m, QuantLayer)]


def forward_order(unit: Unit, x: torch.Tensor) -> tuple[list[nn.Module], torch.Tensor]:
    """One pass of the unit on `x`: which of its quantized layers it calls, in call order, and its
    output (the next unit's input)."""
    order: list[nn.Module] = []

    def hook(mod: nn.Module, _args: tuple, _out: Any) -> None:
        if mod not in order:
            order.append(mod)

    with hooks_removed_after([m.register_forward_hook(hook) for m in quant_layers(unit.module)]):
        y = unit.forward(x)
    return order, y


def layer_call(unit_fn: Callable[[torch.Tensor], Any], layer: nn.Module, x: torch.Tensor,
               output: bool = True) -> tuple[tuple, Optional[torch.Tensor]]:
    """The inputs and output of `layer`'s first call when the unit runs on `x` (the unit stops
    there), so a per-layer search holds one layer's tensors, not the whole unit's. `output=False`:
    the inputs only, taken before the layer runs (its quantizers may be on)."""
    got: list[tuple[tuple, Optional[torch.Tensor]]] = []

    def hook(_mod: nn.Module, args: tuple, out: Optional[torch.Tensor] = None) -> None:
        got.append((tuple(a.detach() for a in args), None if out is None else out.detach()))
        raise _Stop

    handle = layer.register_forward_hook(hook) if output else layer.register_forward_pre_hook(hook)
    with hooks_removed_after([handle]):
        try:
            unit_fn(x)
        except _Stop:
            pass
    if not got:
        raise RuntimeError(f"{type(layer).__name__} was not called by the unit's forward")
    return got[0]


def split_chunks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The calibration batch as chunks of at most `size` images (views, no copy)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return list(torch.split(x, size))


def input_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as a [rows, fan_in] matrix: tokens for a Linear, im2col patches (in the
    order of `weight.reshape(Cout, -1)`) for a Conv2d."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def quantize_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Q(x) with the layer's own input quantizer, whether or not it is currently enabled
    (statistics passes run the model in FP but need the quantized input)."""
    q = getattr(layer, "input_quantizer", None)
    if q is None or not q.calibrated:
        return x
    return q.quantize(x)


@dataclass
class GramStats:
    """Running sums for one layer. `G` and `C` include the trailing ones column; `rows` counts
    the rows summed."""

    G: torch.Tensor
    C: Optional[torch.Tensor] = None
    rows: int = 0

    def second_moment(self) -> torch.Tensor:
        """E[Q(x) Q(x)^T] over rows (GPTQ's H up to the factor 2)."""
        return self.G[:-1, :-1] / self.rows


@dataclass
class _Collector:
    cross: bool
    dtype: torch.dtype
    stats: dict[str, GramStats] = field(default_factory=dict)

    def hook(self, name: str):
        def pre_hook(layer: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            xq = input_rows(layer, quantize_input(layer, x)).to(self.dtype)
            ones = torch.ones(xq.shape[0], 1, dtype=self.dtype, device=xq.device)
            aq = torch.cat([xq, ones], dim=1)
            st = self.stats.get(name)
            if st is None:
                n = aq.shape[1]
                st = GramStats(torch.zeros(n, n, dtype=self.dtype, device=aq.device))
                if self.cross:
                    st.C = torch.zeros(n, n, dtype=self.dtype, device=aq.device)
                self.stats[name] = st
            st.G.addmm_(aq.T, aq)
            if self.cross:
                af = torch.cat([input_rows(layer, x).to(self.dtype), ones], dim=1)
                st.C.addmm_(aq.T, af)
            st.rows += aq.shape[0]

        return pre_hook


def unit_layers(model: nn.Module, unit: Unit) -> dict[str, nn.Module]:
    """The quantized Linear/Conv2d layers inside a unit, by their dotted names in `model`."""
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(m)]: m for m in unit.module.modules() if isinstance(m, WeightLayer)}


@torch.no_grad()
def run_unit(unit: Unit, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """The unit's outputs for every input chunk, written over `chunks` (returned): each input
    is dropped as its output is made, so the calibration set's activations are held once, not
    twice (ViT-B at 128 images: 77 MB a copy)."""
    for i, c in enumerate(chunks):
        chunks[i] = unit.forward(c)
    return chunks


@torch.no_grad()
def collect_grams(
    unit: Unit,
    chunks: list[torch.Tensor],
    layers: dict[str, nn.Module],
    cross: bool = False,
    keep_outputs: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, GramStats], list[torch.Tensor]]:
    """Run the unit over `chunks`, accumulating G (and C if `cross`) for each of `layers`.

    Returns the statistics and (if `keep_outputs`) the unit's outputs, the next unit's inputs, so
    one pass serves both; the outputs are written over `chunks`, as `run_unit` does.
    """
    col = _Collector(cross, dtype)
    with hooks_removed_after([m.register_forward_pre_hook(col.hook(n)) for n, m in layers.items()]):
        for i, c in enumerate(chunks):
            out = unit.forward(c)
            if keep_outputs:
                chunks[i] = out
    return col.stats, chunks if keep_outputs else []


def weights_fp(layers: dict[str, nn.Module]) -> contextlib.AbstractContextManager:
    """Disable the weight quantizers of `layers` inside the block (their weights are not final yet)."""
    return switched((m.weight_quantizer for m in layers.values() if m.weight_quantizer is not None), False)
