"""Seconds per block per reconstruction iteration (forward + backward + Adam step) of the shared
block-reconstruction engine: what a reconstruction setting (iterations x units x batch) will cost
before a sweep commits to it. One cell of `python -m ptqbench.bench --parts recon`."""

from __future__ import annotations

import time
from typing import Any

import torch

# The parameter sets each method's reconstruction learns by default (ReconConfig.learn).
LEARN = {"dopq": ("act_scale", "weight_rounding"), "aiq": ("act_scale", "dfq", "lowrank")}


def recon_step(model: str, method: str, batch: int, iters: int, warmup: int, device: str) -> dict[str, Any]:
    """Mean seconds of one reconstruction step of the first transformer block, random weights and
    images (the time does not depend on their values); the first `warmup` steps are not timed."""
    from ptqbench.algorithms.reconstruction import ReconConfig, prepare_unit
    from ptqbench.algorithms.streaming import unit_layers
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import create_model, make_quantizable, model_entry
    from ptqbench.models.units import model_units
    from ptqbench.quant.calibration import calibrate

    if method not in LEARN:
        raise ValueError(f"reconstruction step time of {method!r}: choose one of {sorted(LEARN)}")
    if batch < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"batch={batch}, iters={iters}, warmup={warmup}: use batch >= 1, iters >= 1, warmup >= 0")
    dev = torch.device(device)
    torch.manual_seed(0)
    net = create_model(model_entry(model), pretrained=False)[0].eval().to(dev)
    # dopq's PTQ stage only: the timed steps below are the reconstruction
    meth = build_method({"name": method, "reconstruct": False} if method == "dopq" else {"name": method}, Bits(4, 4))
    qm = make_quantizable(net, meth.plan())
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(dev)
    calibrate(qm.model, images)
    units = model_units(qm.model)
    with torch.no_grad():
        x = units[0].forward(images)
        target = units[1].forward(x)
    for p in qm.model.parameters():
        p.requires_grad_(False)
    unit = units[1]
    cfg = ReconConfig(learn=LEARN[method], lowrank_ranks=(0, 4, 8, 16, 32))
    state = prepare_unit(unit, unit_layers(qm.model, unit), cfg, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([{k: v for k, v in g.items() if k != "name"} for g in state.groups])
    times = []
    for i in range(warmup + iters):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        loss = (unit.forward(x) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"model": model, "method": method, "batch": batch, "iters": iters,
            "s_per_block_iter": round(sum(times) / len(times), 4)}
