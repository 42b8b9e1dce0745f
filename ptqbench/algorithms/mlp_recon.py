"""APHQ-ViT's MLP reconstruction: every block's GELU becomes a ReLU, and the block's fc1 and fc2 are
retrained (FP, before any quantizer is calibrated) so that the ReLU MLP reproduces the FP GELU MLP,
and keeps reproducing it when fc2's input is clipped to [0, ub] (ub: a high percentile of the FP
GELU outputs). The ReLU's non-negative, bounded output is what a uniform 4-bit quantizer of fc2's
input represents well, which is the point of the stage.

Released code: GoatWu/APHQ-ViT `utils/mlp_recon.py` (`MLPReconstructor.reconstruct_model`,
`reconstruct_single_block`, `LossFunction`, `positive_percentile`) and `test_quant.py`
(`--reconstruct-mlp`: `module.act = nn.ReLU()` on every `mlp`, before the quantizers are wrapped).
Per block, independently (each block's inputs come from the FP GELU model, not from the
reconstructed blocks before it):

- X: the FP model's fc1 input (the block's norm2 output), Y: the FP MLP's output, G: the FP fc2
  input (the GELU output), all on the calibration images;
- ub = the `pct` percentile of the positive entries of G (`positive_percentile`: the entry at
  rank ceil(count * pct) - 1 of the sorted positive values);
- weights: the average perturbation Hessian at the FP `mlp` output
  (ptqbench.algorithms.perturbation_hessian), rescaled to a root mean square of 1;
- `iters` Adam steps (lr 4e-5, cosine to 0) on fc1's and fc2's weights and biases, `batch_size`
  images per step drawn without replacement, loss
      sum_tokens(w (mlp(x) - Y)^2) / d  +  quant_weight * sum_tokens(w (fc2(clip(relu(fc1 x), 0, ub)) - Y)^2) / d
  averaged over the batch (`loss="hessian"`), or the same without w (`loss="mse"`, the release's
  `recon_metric='mse'`); d = `loss_divisor` (the release's 10; Adam is invariant to the loss's
  scale but for its eps).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ptqbench.algorithms.perturbation_hessian import perturbation_hessian
from ptqbench.algorithms.streaming import hooks_removed_after, params_frozen
from ptqbench.heap import large_blocks_unmapped_once
from ptqbench.models.structure import BLOCK, Unit
from ptqbench.progress import progress as progress_bar

MLP_LOSSES = ("hessian", "mse")


@dataclass(frozen=True)
class MLPReconConfig:
    """Attributes (released defaults): iters (20000) and batch_size (32) per block; lr (4e-5);
    pct: percentile of the clip bound ub (0.98 at 4 bits, 0.99 at 3 in the released `best.py`);
    quant_weight: weight of the clipped branch's loss (2.0); loss: "hessian" or "mse";
    loss_divisor: both terms divided by it (10, as released);
    temperature / eps / hessian_chunk: the perturbation Hessian's (20, 1e-6, 32); seed; progress."""

    iters: int = 20000
    batch_size: int = 32
    lr: float = 4e-5
    pct: float = 0.98
    quant_weight: float = 2.0
    loss: str = "hessian"
    loss_divisor: float = 10.0
    temperature: float = 20.0
    eps: float = 1e-6
    hessian_chunk: int = 32
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.iters < 0 or self.batch_size < 1 or self.hessian_chunk < 1:
            raise ValueError("MLP reconstruction needs iters >= 0, batch_size >= 1 and hessian_chunk >= 1")
        if not 0.0 < self.pct <= 1.0:
            raise ValueError(f"pct must lie in (0, 1], got {self.pct}")
        if self.loss not in MLP_LOSSES:
            raise ValueError(f"loss={self.loss!r}; choose one of {MLP_LOSSES}")
        if not self.loss_divisor > 0:
            raise ValueError(f"loss_divisor must be > 0, got {self.loss_divisor}")


def positive_percentile(t: torch.Tensor, pct: float) -> float:
    """The released `positive_percentile`: among the positive entries of `t`, sorted, the one at
    rank ceil(count * pct) - 1 (count * pct in float32, as the release computes it)."""
    pos = t.reshape(-1)
    pos = pos[pos > 0]
    if pos.numel() == 0:
        raise ValueError("positive_percentile: the tensor has no positive entry")
    rank = int((torch.tensor(float(pos.numel()), dtype=torch.float32) * pct).ceil().long()) - 1
    return float(pos.kthvalue(max(rank, 0) + 1).values)


def mlp_units(units: list[Unit]) -> list[int]:
    """Indices of the units whose module is a transformer block with an fc1 -> act -> fc2 `mlp`."""
    return [i for i, u in enumerate(units) if u.kind == BLOCK and all(hasattr(getattr(u.module, "mlp", None), a)
                                                                        for a in ("fc1", "act", "fc2"))]


def relu_mlps(units: list[Unit]) -> int:
    """Replace the activation of every block MLP of `units` by a ReLU; returns how many."""
    idx = mlp_units(units)
    for i in idx:
        units[i].module.mlp.act = nn.ReLU()
    return len(idx)


def _capture(unit: Unit, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The unit's fc1 input, fc2 input and MLP output on `x`, and its output (the next unit's input)."""
    mlp = unit.module.mlp
    got: dict[str, list[torch.Tensor]] = {"x": [], "g": [], "y": []}
    handles = [mlp.fc1.register_forward_pre_hook(lambda _m, a: got["x"].append(a[0].detach())),
               mlp.fc2.register_forward_pre_hook(lambda _m, a: got["g"].append(a[0].detach())),
               mlp.register_forward_hook(lambda _m, _a, out: got["y"].append(out.detach()))]
    with torch.no_grad(), hooks_removed_after(handles):
        outs = [unit.forward(xb) for xb in torch.split(x, chunk)]
    return torch.cat(got["x"]), torch.cat(got["g"]), torch.cat(got["y"]), torch.cat(outs)


def _weighted_error(out: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None, divisor: float) -> torch.Tensor:
    e = (out - target).pow(2)
    if w is not None:
        e = e * w
    return e.sum(1).mean() / divisor


def reconstruct_mlps(student_units: list[Unit], teacher_units: list[Unit], x: torch.Tensor,
                     cfg: MLPReconConfig) -> dict[str, Any]:
    """Train every block MLP of the student (its activation already a ReLU, quantization off) on the
    FP teacher's units (GELU; quantization off); `x` is the first unit's input. Returns per block
    the clip bound, the loss before and after, and the seconds."""
    if len(student_units) != len(teacher_units):
        raise ValueError(f"the FP teacher has {len(teacher_units)} units, the student {len(student_units)}")
    todo = set(mlp_units(student_units))
    per_block, t0 = [], time.perf_counter()
    for i, t_unit in enumerate(teacher_units):
        if i not in todo:
            with torch.no_grad():
                x = torch.cat([t_unit.forward(xb) for xb in torch.split(x, cfg.hessian_chunk)])
            continue
        t_block = time.perf_counter()
        w = None
        if cfg.loss == "hessian":  # before the capture: its tensors are not held through this pass
            with large_blocks_unmapped_once():  # a 32-image pass between steps of 8 (ptqbench.heap)
                w = perturbation_hessian(teacher_units, i, x, site=t_unit.module.mlp, temperature=cfg.temperature,
                                         eps=cfg.eps, chunk=cfg.hessian_chunk, mean=True)
            w = w * torch.sqrt(w.numel() / w.pow(2).sum())
        X, G, Y, x_next = _capture(t_unit, x, cfg.hessian_chunk)
        ub = positive_percentile(G, cfg.pct)
        t_train = time.perf_counter()
        info = _train_mlp(student_units[i], X, Y, w, ub, cfg, i)
        info.update(unit=student_units[i].name, ub=ub, seconds=round(time.perf_counter() - t_block, 3),
                    train_s=round(time.perf_counter() - t_train, 4))
        per_block.append(info)
        x = x_next
    return {"mlp_recon_blocks": len(per_block), "mlp_recon_s": round(time.perf_counter() - t0, 3),
            "mlp_recon_iters": cfg.iters, "mlp_recon_per_block": per_block}


def _train_mlp(unit: Unit, X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None, ub: float,
               cfg: MLPReconConfig, index: int) -> dict[str, Any]:
    mlp = unit.module.mlp
    params = [mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias]
    params = [p for p in params if p is not None]

    def loss_on(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        rec = _weighted_error(mlp(xb), yb, w, cfg.loss_divisor)
        clipped = mlp.fc2(torch.clamp(mlp.act(mlp.fc1(xb)), 0, ub))
        return rec + cfg.quant_weight * _weighted_error(clipped, yb, w, cfg.loss_divisor)

    with torch.no_grad():
        start = float(loss_on(X, Y))
    if cfg.iters == 0:
        return {"loss_start": start, "loss_end": start}
    gen = torch.Generator().manual_seed(cfg.seed * 1000003 + index)
    n, bs = X.shape[0], min(cfg.batch_size, X.shape[0])
    with params_frozen(mlp), torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.iters, eta_min=0.0)
        bar = progress_bar(range(cfg.iters), desc=f"MLP reconstruct {unit.name}", disable=not cfg.progress)
        for _ in bar:
            idx = torch.randperm(n, generator=gen)[:bs].to(X.device)
            loss = loss_on(X[idx], Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.close()
    with torch.no_grad():
        end = float(loss_on(X, Y))
    if not math.isfinite(end):
        raise FloatingPointError(f"MLP reconstruction of {unit.name} diverged (loss {end})")
    return {"loss_start": start, "loss_end": end}
