"""Seconds per reconstruction step of a transformer block, under each reconstructing method's own
recipe: what a reconstruction budget (steps x units x batch) will cost before a sweep commits to
it. One cell of `python -m ptqbench.bench --parts recon`.

A step is what the method's training loop does per iteration for one unit: forward, loss (the
method's: QDrop masks, APHQ-ViT's Hessian weights, FIMA-Q's Fisher), backward and Adam step.
FIMA-Q's Fisher refreshes are timed apart (a fixed number per block). A unit's setup (APHQ-ViT's
Hessian, the FP targets) is not in either. The method's steps run as a job runs them, every stage
(I&S-ViT's and DopQ-ViT's three stages, APHQ-ViT's MLP stage), except its searches (the grid
search, PTQ4ViT's Hessian search): those set quantizer values, which do not change a step's time,
and would cost most of the cell. Weights and images are random for the same reason."""

from __future__ import annotations

import dataclasses
import re
import statistics
from typing import Any, Iterable

import torch
from ptqbench.methods.steps import RECALIBRATE, GridSearch, HessianSearch, Reparameterize, Step, run_steps

BLOCK_UNIT = re.compile(r"(^|\.)blocks\.\d+$")  # ViT/DeiT "blocks.3", Swin "layers.0.blocks.1"; not the embedding or head


def without_searches(steps: Iterable[Step]) -> tuple[Step, ...]:
    """`steps` without their searches, also inside the steps that wrap others (WithFPTeacher,
    WeightsFP, Timed: every dataclass step with a `steps` field). A grid search becomes the
    reparameterization it does on the way (float32, rounded zero point) and a calibration of the
    folded weights, so the post-LN quantizers the reconstruction trains are per tensor, as after
    the search."""
    out: list[Step] = []
    for s in steps:
        if isinstance(s, GridSearch):
            out += [Reparameterize(round_zero_point=True, exact_padding=s.exact_padding, arithmetic="float32"),
                    RECALIBRATE]
            continue
        if isinstance(s, HessianSearch):
            continue
        if dataclasses.is_dataclass(s) and any(f.name == "steps" for f in dataclasses.fields(s)):
            s = dataclasses.replace(s, steps=without_searches(s.steps))
        out.append(s)
    return tuple(out)


def stage_step_times(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Per reconstruction stage in `stats` (a method's statistics: `<prefix>recon_per_unit` of each
    Reconstruct, `mlp_recon_per_block` of APHQ-ViT's MLP stage), the seconds per step of its
    transformer blocks: the median of each block's training-loop seconds over its steps. FIMA-Q's
    Fisher refreshes (`fisher_k` per block, whatever the number of steps) are taken out of the steps
    and given apart, seconds per refresh."""
    rows = []
    for key, per_unit in stats.items():
        if key == "mlp_recon_per_block":
            stage, iters = "mlp", stats.get("mlp_recon_iters")
        elif key.endswith("recon_per_unit"):
            prefix = key[: -len("recon_per_unit")]
            stage, iters = prefix.rstrip("_") or "recon", stats.get(f"{prefix}recon_iters")
        else:
            continue
        blocks = [u for u in per_unit if BLOCK_UNIT.search(u["unit"]) and "train_s" in u]
        if not blocks or not iters:
            continue
        per_step = [(u["train_s"] - u.get("fisher_refresh_s", 0.0)) / iters for u in blocks]
        row = {"stage": stage, "blocks": len(blocks), "iters": iters,
               "s_per_block_step": round(statistics.median(per_step), 4),
               "min_max": f"{min(per_step):.4f}-{max(per_step):.4f}"}
        if "fisher_refresh_s" in blocks[0]:  # FIMA-Q: k refreshes per block whatever the budget, so apart
            row.update(refreshes_per_block=blocks[0]["fisher_refreshes"],
                       s_per_refresh=round(statistics.median(u["fisher_refresh_s"] / u["fisher_refreshes"] for u in blocks), 4))
        rows.append(row)
    return rows


def recipe_step_times(qm: Any, method: Any, images: torch.Tensor) -> list[dict[str, Any]]:
    """Run `method`'s steps less its searches on `qm` (the model patched for `method.plan()`) with
    `images`, and return the seconds per block step of each reconstruction stage (`stage_step_times`)."""
    stats = run_steps(without_searches(method.steps()), qm, images)
    rows = stage_step_times(stats)
    if not rows:
        raise ValueError(f"method {method.name!r} trained no transformer block (no reconstruction in its recipe, "
                         "or method.iters=0): the recon part times reconstruction methods")
    return rows


def reconstructing_methods() -> list[str]:
    """The registered methods with a block reconstruction: those whose config has the `iters` and
    `batch_size` of its training loop."""
    from ptqbench.methods import METHODS

    return sorted(n for n, cls in METHODS.items() if {"iters", "batch_size"} <= {f.name for f in dataclasses.fields(cls.Config)})


def recon_step(model: str, method: str, batch: int, iters: int, calib: int, device: str,
               options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The cell: `model` with random weights, `calib` random images, `method` at W4A4 with `iters`
    steps per unit at `batch` (its `iters` / `batch_size` options, which every reconstructing
    method has) plus `options`; one row per reconstruction stage."""
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import create_model, make_quantizable, model_entry

    if method not in reconstructing_methods():
        raise ValueError(f"reconstruction step time of {method!r}: choose one of {reconstructing_methods()}")
    if batch < 1 or iters < 1 or calib < batch:
        raise ValueError(f"batch={batch}, iters={iters}, calib={calib}: use batch >= 1, iters >= 1, calib >= batch")
    meth = build_method({"name": method, "iters": iters, "batch_size": batch, **(options or {})}, Bits(4, 4))
    dev = torch.device(device)
    torch.manual_seed(0)
    net = create_model(model_entry(model), pretrained=False)[0].eval().to(dev)
    images = torch.randn(calib, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(dev)
    rows = recipe_step_times(make_quantizable(net, meth.plan()), meth, images)
    return [{"model": model, "method": method, "batch": batch, **r} for r in rows]

