"""The gradient of a loss on the logits with respect to the input of the model's last units,
taken one unit's graph at a time.

APHQ-ViT's perturbation Hessian and FIMA-Q's Fisher rows need dL/dy at a unit's output y for a
chunk of calibration images, L a loss on the logits of the FP rest of the model. One backward
through the whole rest holds every remaining unit's autograd graph (about 1.2 GB for DeiT-T's
twelve blocks at the released chunk of 32 images). Here the rest runs forward without a graph,
keeping each unit's input, and the backward rebuilds one unit's graph at a time from its input
(activation checkpointing): the same operations on the same values, so the same gradient bit for
bit, with the memory of one unit's graph.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import torch

from ptqbench.models.structure import Unit


def loss_grad_through(rest: list[Unit], x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """dL/dx for L = `loss`(the logits of `rest` run from `x`); `rest` ends with the unit that gives
    the logits (empty: `x` is the logits)."""
    with torch.no_grad():
        ins = [x]
        for u in rest[:-1]:
            ins.append(u.forward(ins[-1]))
    with torch.enable_grad():
        xk = ins[-1].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(rest[-1].forward(xk) if rest else xk), xk)
        for u, xin in zip(reversed(rest[:-1]), reversed(ins[:-1])):
            xk = xin.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(u.forward(xk), xk, g)
    return g.detach()


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
