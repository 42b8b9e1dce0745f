"""APHQ-ViT's average perturbation Hessian: the loss weights of its block and MLP reconstructions.

For a site s (a unit's output, or a module inside it), the FP model's logits are compared with
their own unperturbed softmax at temperature T by KL(p || softmax(logits / T)), batch mean; the
gradient of that loss with respect to the site's output is taken twice, with every element of
the output shifted by +eps and by -eps. Their absolute difference approximates |H 1| 2 eps, the
diagonal-dominant part of the Hessian of the task loss at the site, and weighs the squared
reconstruction error: (pred - target)^2 * |g+ - g-|. With `mean`, the weights are averaged over
the calibration images (one [1, ...] tensor shared by every sample; the released default).

Released code: GoatWu/APHQ-ViT `utils/block_recon.py: BlockReconstructor.init_block_perturb_hessian`
(the site is the block's output, patch embedding's output, PatchMerging's output) and
`utils/mlp_recon.py: MLPReconstructor.init_block_perturb_hessian` (the site is `block.mlp`), with
T = 20, eps = 1e-6, the calibration set in batches of 32 (`optim_batch_size`; "batchmean" divides
by each batch's size, so the chunk size is part of the result). Here the rest of the model runs
from the site through the family's units (ptqbench.models.structure.Unit) instead of from the
images, which gives the same tensors for a block (its output is what the next unit reads). For
the patch embedding the unit's output is after the class token and position embedding, where the
release perturbs before them: the error there is FP on both sides, only rounding differs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ptqbench.algorithms.unit_grad import REBUILD_IMAGES, loss_grad_through, vjp_by_images
from ptqbench.algorithms.row_store import Rows
from ptqbench.models.structure import Unit


def _rest(units: list[Unit], y: torch.Tensor) -> torch.Tensor:
    for u in units:
        y = u.forward(y)
    return y


def _kl_to(logits: torch.Tensor, ref: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits / temperature, dim=-1), ref, reduction="batchmean")


def perturbation_hessian(units: list[Unit], index: int, x: Rows, *, site: Optional[nn.Module] = None,
                         temperature: float = 20.0, eps: float = 1e-6, chunk: int = 32,
                         mean: bool = True, rebuild_images: int = REBUILD_IMAGES) -> torch.Tensor:
    """|g(+eps) - g(-eps)| at the output of `units[index]` (or of `site`, a module inside it),
    the FP model's units `units` (the last one gives the logits) run from `x`, the input of
    `units[index]`. Returns [1, ...] (`mean`) or [N, ...] float32 weights. The caller disables
    quantization in the model the units belong to. `rebuild_images`: images per rebuilt graph in
    the backward (memory only; ptqbench.algorithms.unit_grad)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    unit, rest = units[index], units[index + 1:]
    grads: list[torch.Tensor] = []
    for xb in x.split(chunk):  # a tensor or a RowStore (ptqbench.algorithms.row_store)
        with torch.no_grad():
            ref = F.softmax(_rest(rest, unit.forward(xb)) / temperature, dim=-1)
        pair = []
        for sign in (1.0, -1.0):
            pair.append(_site_grad(unit, rest, xb, ref, site, sign * eps, temperature, rebuild_images))
        grads.append((pair[0] - pair[1]).abs())
    g = torch.cat(grads)
    return g.mean(dim=0, keepdim=True) if mean else g


def _site_grad(unit: Unit, rest: list[Unit], xb: torch.Tensor, ref: torch.Tensor, site: Optional[nn.Module],
               shift: float, temperature: float, rebuild_images: int) -> torch.Tensor:
    """The gradient of the KL loss with respect to the site's output shifted by `shift`. For a site
    inside the unit, the unit runs twice: without a graph for the rest's backward, then with one
    for the last step, so the unit's graph and a rest unit's graph are never held together (the
    same operations on the same values as one pass), and that graph is built over a few images at
    a time."""
    seen: list[torch.Tensor] = []

    def shifted(y: torch.Tensor) -> torch.Tensor:
        # a leaf of its own: the parameters may be frozen, and nothing upstream needs a gradient
        y = y.detach().requires_grad_(True) + torch.ones_like(y) * shift  # as released: x + ones * 1e-6
        seen.append(y)
        return y

    def kl(logits: torch.Tensor) -> torch.Tensor:
        return _kl_to(logits, ref, temperature)

    if site is None:
        with torch.no_grad():
            y = unit.forward(xb)
        return loss_grad_through(rest, shifted(y).detach(), kl, rebuild_images)

    def unit_forward(at: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.clear()
        handle = at.register_forward_hook(lambda _m, _i, out: shifted(out))
        try:
            out = unit.forward(x)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise RuntimeError(f"the perturbation site ran {len(seen)} times in one unit forward; expected once")
        return out

    with torch.no_grad():
        y = unit_forward(site, xb)
    g_out = loss_grad_through(rest, y, kl, rebuild_images)
    return vjp_by_images(lambda xc: unit_forward(site, xc), xb, g_out, rebuild_images, wrt=lambda: seen[0]).detach()
