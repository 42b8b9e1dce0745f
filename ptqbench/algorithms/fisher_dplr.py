"""FIMA-Q's reconstruction loss: a diagonal plus low-rank (DPLR) approximation of the Fisher
information of the task loss at a unit's output, refreshed while the unit trains.

Released code: ShiheWang/FIMA-Q @ 64c4b00, `utils/block_recon.py` (`BlockReconstructor.new_fisher_ro`,
`reconstruct_single_block`, `LossFunction` with `rec_loss='fisher_dplr'`), `configs/{3,4}bit/best.py`
(k = 5, p1 = p2 = 1, `dis_mode='q'`, T = 20).

A refresh (`fisher_rows`) runs the calibration images through the model with only the training unit
quantized, as it is at that step (soft AdaRound, QDrop inside its quantizers), the units before it
and after it in FP; the loss is KL(softmax(f_fp / T) || softmax(f / T)), batch mean over batches of
32 images. It yields two rows over the unit's flattened output (N = tokens x channels):

    g = mean over images of |dL/dy|        d = mean over images of |y_q - y_fp|

Refreshes append rows: after j of them, G and D are [j, N] and B = D D^T ([j, j]). For a batch
with errors e = |y - y_fp| ([b, N]):

    L1 = mean_b (e G^T) B^-1 (e G^T)^T        L2 = mean_{b,n} e^2 * mean_j G_jn
    loss = p1 L1 / L1_0 + p2 L2 / L2_0

with L1_0, L2_0 the values at the first step and again at the step of every refresh. Refreshes
happen at the steps divisible by floor(iters / k) (`schedule="spread"`, the released `dis_mode='q'`)
or at the first k steps (`"first"`, `dis_mode='qf'`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ptqbench.algorithms.unit_grad import REBUILD_IMAGES, graph_values_dropped, loss_grad_through
from ptqbench.algorithms.row_store import Rows
from ptqbench.models.structure import Unit

FISHER_SCHEDULES = ("spread", "first")


def refresh_steps(iters: int, k: int, schedule: str) -> set[int]:
    """The steps (0-based) at which the Fisher rows are refreshed."""
    if k < 1 or iters < k:
        raise ValueError(f"the Fisher refresh needs k >= 1 and iters >= k, got k={k}, iters={iters}")
    if schedule == "first":
        return set(range(k))
    every = iters // k
    return set(range(0, iters, every))


@torch.no_grad()
def fp_references(rest: list[Unit], y_fp: Rows, temperature: float, chunk: int) -> list[torch.Tensor]:
    """softmax(f_fp / T) per chunk of images: the same at every refresh of a unit, so computed once."""
    refs = []
    for yb in y_fp.split(chunk):  # a tensor or a RowStore (ptqbench.algorithms.row_store)
        for u in rest:
            yb = u.forward(yb)
        refs.append(F.softmax(yb / temperature, dim=-1))
    return refs


def fisher_rows(unit: Unit, rest: list[Unit], x_fp: Rows, y_fp: Rows, temperature: float,
                chunk: int, refs: Optional[list[torch.Tensor]] = None,
                rebuild_images: int = REBUILD_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, d), each [1, N]: the sample means of |dL/dy| and |y_q - y_fp| over the calibration images,
    with `unit` run as it trains on its FP input `x_fp` and `rest` (the FP units after it, ending
    with the logits) from its output; `refs`: `fp_references(rest, y_fp, ...)`, kept by a caller that
    refreshes more than once; `rebuild_images`: images per rebuilt graph in the backward through
    `rest` (memory only; ptqbench.algorithms.unit_grad). The caller keeps `rest` in FP."""
    if refs is None:
        refs = fp_references(rest, y_fp, temperature, chunk)
    grads, deltas = [], []
    for xb, yb, ref in zip(x_fp.split(chunk), y_fp.split(chunk), refs):  # tensors or RowStores
        with torch.enable_grad(), graph_values_dropped():  # the unit runs as it trains; y is only read
            y = unit.forward(xb).detach()
        grads.append(loss_grad_through(
            rest, y, lambda logits, ref=ref: F.kl_div(F.log_softmax(logits / temperature, dim=-1), ref, reduction="batchmean"),
            rebuild_images))
        deltas.append((y - yb).abs())  # element-wise: per chunk gives the same values
    # as released: concatenate, then one mean over the images (the same summation order)
    g = torch.cat(grads)
    g = g.reshape(g.shape[0], -1).abs().mean(dim=0)[None]
    d = torch.cat(deltas).mean(dim=0).reshape(1, -1)
    return g, d


class DPLRLoss:
    """The DPLR loss of one unit; `refresh` appends a (g, d) pair of rows (see the module docstring)."""

    def __init__(self, p1: float = 1.0, p2: float = 1.0) -> None:
        self.p1, self.p2 = p1, p2
        self.G: Optional[torch.Tensor] = None
        self.D: Optional[torch.Tensor] = None
        self.inv_B: Optional[torch.Tensor] = None
        self._norm: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def rank(self) -> int:
        return 0 if self.G is None else self.G.shape[0]

    def refresh(self, g: torch.Tensor, d: torch.Tensor) -> None:
        self.G = g if self.G is None else torch.cat([self.G, g])
        self.D = d if self.D is None else torch.cat([self.D, d])
        self.inv_B = torch.linalg.inv(self.D @ self.D.T)
        self._norm = None  # the next loss sets L1_0 and L2_0 again

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.G is None or self.inv_B is None:
            raise RuntimeError("DPLRLoss needs a refresh before its first use")
        e = (out - target).abs().reshape(out.shape[0], -1)
        a = e.unsqueeze(1) @ self.G.T                                  # [b, 1, k]
        l1 = (a @ self.inv_B @ a.transpose(1, 2)).mean()
        l2 = (e.pow(2) * self.G.mean(dim=0)).mean()
        if self._norm is None:
            self._norm = (l1.detach(), l2.detach())
        return self.p1 * l1 / self._norm[0] + self.p2 * l2 / self._norm[1]
