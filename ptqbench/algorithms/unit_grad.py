"""The gradient of a loss on the logits with respect to the input of the model's last units,
taken one unit's graph at a time.

APHQ-ViT's perturbation Hessian and FIMA-Q's Fisher rows need dL/dy at a unit's output y for a
chunk of calibration images, L a loss on the logits of the FP rest of the model. One backward
through the whole rest holds every remaining unit's autograd graph (about 1.2 GB for DeiT-T's
twelve blocks at the released chunk of 32 images). Here the rest runs forward without a graph,
keeping each unit's input, and the backward rebuilds one unit's graph at a time from its input
(activation checkpointing): the same operations on the same values, so the same gradient bit for
bit, with the memory of one unit's graph. Each image's gradient through a unit depends on that
image alone, so the graph is rebuilt over `REBUILD_IMAGES` images at a time (about 23 MB for a
DeiT-T block instead of 90 at 32 images); the loss itself, whose batch mean couples the images,
is differentiated over the whole chunk.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Optional

import torch

from ptqbench.models.structure import Unit


REBUILD_IMAGES = 8


def loss_grad_through(rest: list[Unit], x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
                      rebuild_images: int = REBUILD_IMAGES) -> torch.Tensor:
    """dL/dx for L = `loss`(the logits of `rest` run from `x`); `rest` ends with the unit that gives
    the logits (empty: `x` is the logits). The units before the last are differentiated
    `rebuild_images` images at a time."""
    with torch.no_grad():
        ins = [x]
        for u in rest[:-1]:
            ins.append(u.forward(ins[-1]))
    with torch.enable_grad():
        xk = ins.pop().detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(rest[-1].forward(xk) if rest else xk), xk)
    for u in reversed(rest[:-1]):
        g = vjp_by_images(u.forward, ins.pop(), g, rebuild_images)
    return g.detach()


def vjp_by_images(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g_out: torch.Tensor,
                  images: int, wrt: Optional[Callable[[], torch.Tensor]] = None) -> torch.Tensor:
    """(d fn(x) / dx)^T g_out, with fn's graph built over `images` rows of `x` at a time: for a
    function that treats each image (row) on its own, the same values with a fraction of the graph.
    `wrt`: differentiate with respect to the tensor it returns after each call of `fn` (one that
    `fn` made, e.g. a hooked module's output) instead of the input rows."""
    parts = []
    for xc, gc in zip(x.split(images), g_out.split(images)):
        with torch.enable_grad():
            xc = xc.detach().requires_grad_(wrt is None)
            out = fn(xc)
            (gx,) = torch.autograd.grad(out, xc if wrt is None else wrt(), gc)
        parts.append(gx)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _dropped(_: torch.Tensor) -> None:
    return None


def _never_unpacked(_: None) -> torch.Tensor:
    raise RuntimeError("this graph was built with graph_values_dropped(): it has no saved values to differentiate")


def graph_values_dropped() -> AbstractContextManager:
    """Grad mode on, but every tensor autograd would save for a backward is dropped as it is saved.

    For a forward that must run as in training (grad mode picks soft rounding and QDrop's drop in the
    quantizers) whose output is only read, never differentiated: the same values, without holding
    the unit's graph (for FIMA-Q's Fisher refresh of a DeiT-T block at 32 images, most of the heap
    in use at that moment)."""
    return torch.autograd.graph.saved_tensors_hooks(_dropped, _never_unpacked)
