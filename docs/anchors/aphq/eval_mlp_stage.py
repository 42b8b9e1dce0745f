"""APHQ-ViT's MLP stage alone, ptqbench side: run `ReluMLPReconstruct` (GELU -> ReLU, fc1/fc2
retrained against the FP GELU MLPs) on the calibration tensor that run.sh exported, then evaluate
the FP ReLU model (no quantization) on the validation images. The released run logs the same
number after its MLP stage ("Validating after model reconstruction", `mlp_top1` in ANCHOR_RESULT).

    python docs/anchors/aphq/eval_mlp_stage.py --calib anchor_runs/calib_deit_tiny_n32_seed0.pt \
        --iters 100 --batch 8 [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", required=True)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="ptqbench's recon_seed (batch draws)")
    ap.add_argument("--bits", type=int, default=4, help="picks the released clip percentile")
    ap.add_argument("--teacher-attention", default="timm", help="method.teacher_attention (timm, unfused)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import timm
    from timm.data import create_transform, resolve_data_config

    from ptqbench.data.imagenet import ImageNetFolder, make_loader
    from ptqbench.methods import Bits, build_method
    from ptqbench.methods.steps import ReluMLPReconstruct, WithFPTeacher
    from ptqbench.models import make_quantizable
    from ptqbench.quant.calibration import quant_disabled

    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    data = Path(os.environ.get("PTQBENCH_DATA", REPO.parent / "shared" / "data"))
    model = timm.create_model("deit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(
        file=str(data / "weights" / "deit_tiny_patch16_224.safetensors"))).eval()
    method = build_method({"name": "aphq", "iters": args.iters, "batch_size": args.batch, "recon_seed": args.seed,
                           "teacher_attention": args.teacher_attention, "progress": False}, Bits(args.bits, args.bits))
    qm = make_quantizable(model, method.plan())
    calib = torch.load(args.calib)["images"]
    t0 = time.perf_counter()
    teacher = method.steps()[0]  # the method's WithFPTeacher, with the MLP stage alone inside
    assert isinstance(teacher, WithFPTeacher), teacher
    stats = dataclasses.replace(teacher, steps=(ReluMLPReconstruct(method.config.mlp_config(args.bits)),))(qm, calib)
    mlp_s = time.perf_counter() - t0
    ds = ImageNetFolder(data / "imagenet-mini", "val", create_transform(**resolve_data_config({}, model=model)))
    correct = top5 = n = 0
    with torch.no_grad(), quant_disabled(qm.model):
        for x, y in make_loader(ds, 100, 0):
            logits = qm.model(x)
            correct += int((logits.argmax(1) == y).sum())
            top5 += int((logits.topk(5, 1).indices == y[:, None]).any(1).sum())
            n += len(y)
    ubs = [round(b["ub"], 6) for b in stats["mlp_recon_per_block"]]
    print(f"MLP_STAGE iters={args.iters} batch={args.batch} seed={args.seed} mlp_s={mlp_s:.1f} "
          f"fp_relu_top1={100 * correct / n:.3f} top5={100 * top5 / n:.3f} images={n} ub={ubs}")


if __name__ == "__main__":
    main()
