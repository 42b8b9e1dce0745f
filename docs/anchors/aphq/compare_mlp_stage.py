"""APHQ-ViT's loss weights, released vs ptqbench, block by block, on the same DeiT-T weights and
calibration tensor (no training, so all are deterministic): the MLP stage's clip bound `ub` and
normalized average perturbation Hessian at the FP `mlp` output, and the block reconstruction's
average perturbation Hessian at the FP block output.

The released side imports `utils/mlp_recon.py` from a patched checkout (`KEEP_SRC=1
docs/anchors/aphq/run.sh ...` prints its path) and runs `MLPReconstructor.init_block_raw_data` and
`positive_percentile` on one batch of all the calibration images (the release's
`optim_batch_size` 32 at 32 images), and `BlockReconstructor.init_block_perturb_hessian` for the
block outputs. The ptqbench side runs `ptqbench.algorithms.mlp_recon`'s
capture, `positive_percentile` and `perturbation_hessian` on the FP teacher's units, the teacher
that `method=aphq` takes (`--teacher-attention`: its `method.teacher_attention`, default timm).

    python docs/anchors/aphq/compare_mlp_stage.py --src /tmp/aphq_anchor.XXXX/APHQ-ViT \
        --calib anchor_runs/calib_deit_tiny_n32_seed0.pt [--blocks 0,1,11] [--pct 0.98]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="the patched released checkout (APHQ-ViT/)")
    ap.add_argument("--calib", required=True, help="the calibration .pt that run.sh exported")
    ap.add_argument("--blocks", default="0,1,11")
    ap.add_argument("--pct", type=float, default=0.98)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--teacher-attention", default="timm", help="method.teacher_attention (timm, unfused)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    data = Path(os.environ.get("PTQBENCH_DATA", REPO.parent / "shared" / "data"))
    weights = Path(args.weights or data / "weights" / "deit_tiny_patch16_224.safetensors")
    calib = torch.load(args.calib)
    images, labels = calib["images"], calib["labels"]
    blocks = [int(b) for b in args.blocks.split(",")]

    import timm

    def fresh() -> torch.nn.Module:
        return timm.create_model("deit_tiny_patch16_224", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(weights))).eval()

    released = released_side(args.src, fresh, images, labels, blocks, args.pct)
    ours = ptqbench_side(fresh, images, blocks, args.pct, args.teacher_attention)
    for b in blocks:
        (rub, rg, rbg), (pub, pg, pbg) = released[b], ours[b]
        print(f"blocks.{b}: ub released {rub!r} ptqbench {pub!r} {'equal' if rub == pub else 'DIFFER'}")
        for what, r, p in (("MLP-stage Hessian", rg, pg), ("block Hessian", rbg, pbg)):
            diff = (r - p).abs()
            print(f"  {what} {tuple(r.shape)}: bit-identical {int((r == p).sum())}/{r.numel()}, "
                  f"max |diff| {float(diff.max()):.3e} (values up to {float(r.abs().max()):.3e}), "
                  f"relative L2 {float(diff.norm() / r.norm()):.3e}")


def released_side(src: str, fresh, images, labels, blocks, pct) -> dict:
    sys.path.insert(0, src)
    from utils.block_recon import BlockReconstructor  # the released code
    from utils.mlp_recon import MLPReconstructor, positive_percentile

    model, full = fresh(), fresh()
    for name, m in model.named_modules():
        if name.split(".")[-1] == "mlp":
            m.act = torch.nn.ReLU()
    rec = MLPReconstructor(model, full, [(images, labels)], metric="hessian_perturb", temp=20)
    out = {}
    for b in blocks:
        fb = rec.full_blocks[f"blocks.{b}"]
        rec.init_block_raw_data(fb, torch.device("cpu"))
        out[b] = (positive_percentile(fb.mlp.fc2.raw_input, pct=pct), fb.mlp.raw_grad.clone())
        del fb.mlp.fc1.raw_input, fb.mlp.fc2.raw_input, fb.mlp.raw_out, fb.mlp.raw_grad
    q, full = fresh(), fresh()  # the block stage's hooks, on fresh models
    brec = BlockReconstructor(q, full, [(images, labels)], metric="hessian_perturb", use_mean_hessian=True, temp=20)
    for b in blocks:
        name = f"blocks.{b}"
        blk, fb = brec.blocks[name], brec.full_blocks[name]
        brec.init_block_raw_inp_outp(blk, fb, name, torch.device("cpu"))
        brec.init_block_perturb_hessian(blk, fb, name, torch.device("cpu"))
        out[b] = (*out[b], blk.raw_grad.clone())
    sys.path.remove(src)
    return out


def ptqbench_side(fresh, images, blocks, pct, attention: str) -> dict:
    sys.path.insert(0, str(REPO))
    from ptqbench.algorithms.mlp_recon import _capture, positive_percentile
    from ptqbench.algorithms.perturbation_hessian import perturbation_hessian
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from ptqbench.models.families import family_of
    from ptqbench.quant.calibration import quant_disabled

    method = build_method({"name": "aphq", "teacher_attention": attention}, Bits(4, 4))
    qm = make_quantizable(fresh(), method.plan())
    teacher = method.steps()[0].teacher_of(qm)  # the method's WithFPTeacher
    fam, units = family_of(teacher.model), teacher.units
    x = fam.unit_input(teacher.model, images)
    out = {}
    with quant_disabled(teacher.model):
        for i, u in enumerate(units):
            if u.name.startswith("blocks.") and int(u.name.split(".")[1]) in blocks:
                _, g_in, _, _ = _capture(u, x, 32)
                w = perturbation_hessian(units, i, x, site=u.module.mlp, chunk=32)
                w = w * torch.sqrt(w.numel() / w.pow(2).sum())
                bw = perturbation_hessian(units, i, x, chunk=32)
                out[int(u.name.split(".")[1])] = (positive_percentile(g_in, pct), w, bw)
            with torch.no_grad():
                x = u.forward(x)
    return out


if __name__ == "__main__":
    main()
