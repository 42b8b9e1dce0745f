"""Seconds per block per reconstruction iteration (forward + backward + Adam step) of the shared
engine, for DopQ-ViT's and AIQViT's default `learn` sets.

    python benchmarks/recon_step_time.py                              # DeiT-S and ViT-B, batch 8 and 32
    python benchmarks/recon_step_time.py --models deit_small --batch 64 --iters 20

Weights are random (timm's architecture only: the time does not depend on them), calibration
images random; the model runs on CUDA when present, else CPU. The first `--warmup` iterations are
not timed. Not a test: run on request, keep the output in results/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import timm
import torch

from ptqbench.methods import Bits, build_method
from ptqbench.models import make_quantizable
from ptqbench.models.units import model_units
from ptqbench.algorithms.reconstruction import ReconConfig, prepare_unit
from ptqbench.algorithms.streaming import unit_layers

ARCH = {"deit_small": "deit_small_patch16_224", "deit_tiny": "deit_tiny_patch16_224", "vit_base": "vit_base_patch16_224"}
LEARN = {"dopq": ("act_scale", "weight_rounding"), "aiq": ("act_scale", "dfq", "lowrank")}


def step_time(model_name: str, method: str, batch: int, iters: int, warmup: int, device: torch.device) -> float:
    """Mean seconds of one reconstruction step of the first transformer block."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH[model_name], pretrained=False).eval().to(device)
    meth = build_method({"name": method, "reconstruct": False} if method == "dopq" else {"name": method}, Bits(4, 4))
    qm = make_quantizable(model, meth.plan())
    images = torch.randn(batch, 3, 224, 224, device=device)
    from ptqbench.quant.calibration import calibrate

    calibrate(qm.model, images)
    units = model_units(qm.model)
    with torch.no_grad():
        x = units[0].forward(images)
        target = units[1].forward(x)
    for p in qm.model.parameters():
        p.requires_grad_(False)
    unit = units[1]
    cfg = ReconConfig(learn=LEARN[method], lowrank_ranks=(0, 4, 8, 16, 32))
    st = prepare_unit(unit, unit_layers(qm.model, unit), cfg, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([{k: v for k, v in g.items() if k != "name"} for g in st.groups])
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        loss = (unit.forward(x) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["deit_small", "vit_base"], choices=sorted(ARCH))
    ap.add_argument("--methods", nargs="+", default=["dopq", "aiq"], choices=sorted(LEARN))
    ap.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for m in args.models:
        for meth in args.methods:
            for b in args.batch:
                s = step_time(m, meth, b, args.iters, args.warmup, device)
                rows.append({"model": m, "method": meth, "batch": b, "s_per_block_iter": round(s, 4)})
                print(json.dumps(rows[-1]), flush=True)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"\n{platform.node()} {dev}, torch {torch.__version__}")
    print("| model | method | batch | s / block / iter |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['batch']} | {r['s_per_block_iter']} |")


if __name__ == "__main__":
    main()
