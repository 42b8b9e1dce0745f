"""QDrop / BRECQ reconstruction of the first units, released APHQ-ViT code vs ptqbench, over seeds.

A whole-model comparison of QDrop rests on a few draws of each side's random stream (batch order,
QDrop masks) and on 40 minutes of calibration per side. This check isolates the reconstruction:
both sides start from the same calibrated units (the released calibration checkpoint on one side,
ptqbench's grid search of the same units on the other: bit-identical, `compare_calibration.py`),
reconstruct the patch embedding and the first blocks on the same 32 calibration images, and report
each unit's loss after training, on all images, with the same formula (squared error summed over
tokens, averaged over images and channels: the released `lp_loss`, ptqbench's `sum_dim1`).

Random streams are aligned: unit `i` of seed `s` starts from seed `s * 1000003 + i` on both sides
(ptqbench's per-unit generator; the released code draws from the global generator, seeded here
before each unit), and both sides draw the same numbers in the same order (the batch indices, the
unit-input mask, then one mask per activation quantizer in forward order, each laid out like its
tensor; `--trace N` prints the first N draws with their shapes and callers). With the same numbers
the two codes must give the same losses up to float rounding, with or without QDrop's drop
(`--drop 1` is the `brecq_qinp` input mode).

    # released side (the patched checkout that docs/anchors/aphq/run.sh prepares, KEEP_SRC=1)
    python docs/anchors/aphq/unit_spread.py released --src <checkout>/APHQ-ViT \
        --ckpt <checkout>/checkpoint/quant_result/<run>/deit_tiny_w4_a4_calibsize_32_mse.pth \
        --calib /tmp/aphq_work/runs/calib_deit_tiny_n32_seed0.pt --bits 4 --units 3 --seeds 0,1,2,3,4 --out rel.json
    # ptqbench side
    python docs/anchors/aphq/unit_spread.py ptqbench --calib ... --bits 4 --units 3 --seeds 0,1,2,3,4 --out ours.json
    python docs/anchors/aphq/unit_spread.py compare rel.json ours.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
SEED_STRIDE = 1000003  # ptqbench's per-unit generator: seed * SEED_STRIDE + unit index


def lp_sum_tokens(out: torch.Tensor, target: torch.Tensor) -> float:
    """Squared error summed over dim 1 (tokens), averaged over the rest (released `lp_loss`)."""
    return float((out - target).pow(2).sum(1).mean())


def trace_draws(limit: int) -> None:
    """Print the shape and caller of the first `limit` random draws (rand, rand_like, randperm):
    where the two streams part, if they do."""
    import traceback

    count = [0]

    def wrap(fn):
        def traced(*a, **k):
            count[0] += 1
            if count[0] <= limit:
                shape = tuple(a[0].shape) if isinstance(a[0], torch.Tensor) else a[0]
                where = [f"{Path(f.filename).name}:{f.lineno}" for f in traceback.extract_stack()[-4:-1]]
                print(f"draw {count[0]:3d} {fn.__name__:9s} {str(shape):24s} {' < '.join(reversed(where))}", flush=True)
            return fn(*a, **k)
        return traced

    torch.rand, torch.rand_like, torch.randperm = wrap(torch.rand), wrap(torch.rand_like), wrap(torch.randperm)


def released(args: argparse.Namespace) -> dict:
    src = Path(args.src).resolve()
    os.environ["APHQ_BATCH"] = str(args.batch)
    sys.path.insert(0, str(src))
    os.chdir(tempfile.mkdtemp(prefix="unit_spread_"))  # test_quant makes ./checkpoint/... on import
    torch.Tensor.cuda = lambda self, *a, **k: self  # anchor patch P3, as test_quant's __main__ does
    torch.nn.Module.cuda = lambda self, *a, **k: self
    import timm
    import test_quant
    from utils.block_recon import BlockReconstructor
    from utils.wrap_net import wrap_modules_in_net

    sys.path.insert(0, str(src / "configs" / f"{args.bits}bit"))
    cfg = __import__("qdrop_baseline").Config()
    cfg.a_bit = cfg.qhead_a_bit = cfg.w_bit = args.bits  # run.sh's setting for every config
    calib = torch.load(args.calib, weights_only=False)
    ds = torch.utils.data.TensorDataset(calib["images"][:32], calib["labels"][:32])
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.optim_batch_size, shuffle=False)
    fp = timm.create_model("deit_tiny_patch16_224", checkpoint_path=str(args.weights)).eval()
    ns = types.SimpleNamespace(load_calibrate_checkpoint=args.ckpt, load_optimize_checkpoint=None)
    names = ["patch_embed"] + [f"blocks.{i}" for i in range(args.units - 1)]
    out: dict = {}
    for iters, seed in [(i, s) for i in args.iters_list for s in args.seed_list]:
        key = str(seed) if len(args.iters_list) == 1 else f"{seed}@{iters}"
        model = wrap_modules_in_net(copy.deepcopy(fp), cfg, reparam=False, recon=False).eval()
        model = test_quant.load_model(model, ns, torch.device("cpu"), mode="calibrate")
        br = BlockReconstructor(model, copy.deepcopy(fp), loader, metric=cfg.optim_metric, temp=cfg.temp,
                                use_mean_hessian=cfg.use_mean_hessian)
        for b in br.blocks.values():
            br.set_block_mode(b, "raw")
        losses = []
        for i, name in enumerate(names):
            block, full_block = br.blocks[name], br.full_blocks[name]
            br.init_block_raw_data(block, full_block, name, torch.device("cpu"), qinp=True, keep_gpu=True)
            x_q, target = block.quanted_input, block.raw_out
            torch.manual_seed(seed * SEED_STRIDE + i)
            mode = "qdrop" if args.drop < 1.0 else "qinp"
            br.reconstruct_single_block(name, block, torch.device("cpu"), iters=iters, quant_act=True, mode=mode,
                                        drop_prob=args.drop)
            br.quanted_blocks.append(name)
            br.set_block_mode(block, "quant_forward")
            with torch.no_grad():
                losses.append(lp_sum_tokens(torch.cat([block(x) for x in x_q.split(args.batch)]), target))
            br.set_block_mode(block, "raw")
        out[key] = dict(zip(names, losses))
        print(f"released seed {key}: " + ", ".join(f"{n} {v:.7g}" for n, v in out[key].items()), flush=True)
    return out


def ours(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    import dataclasses

    import timm

    from ptqbench.algorithms.grid_search import search_model
    from ptqbench.algorithms.reconstruction import reconstruct
    from ptqbench.methods import Bits, build_method
    from ptqbench.methods.steps import Calibrate
    from ptqbench.models import make_quantizable
    from ptqbench.models.families.base import FAMILIES

    calib = torch.load(args.calib, weights_only=False)["images"][:32]
    model = timm.create_model("deit_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(args.weights))).eval()
    inputs = "qdrop" if args.drop < 1.0 else "quantized"
    method = build_method({"name": "qdrop", "iters": 1, "batch_size": args.batch, "inputs": inputs,
                           "drop_prob": args.drop, "search_images": None, "progress": False},
                          Bits(args.bits, args.bits))
    qm = make_quantizable(model, method.plan())
    Calibrate()(qm, calib)
    c = method.config
    search_model(qm.model, qm.units[:args.units], calib, c.search_config(), qm.reparam_pairs, c.exact_padding)
    out: dict = {}
    for iters, seed in [(i, s) for i in args.iters_list for s in args.seed_list]:
        key = str(seed) if len(args.iters_list) == 1 else f"{seed}@{iters}"
        q = copy.deepcopy(qm)
        q.units = FAMILIES[q.family].units(q.model)  # units close over their model: rebuild on the copy
        st = reconstruct(q.model, q.units[:args.units], calib, dataclasses.replace(c.engine_config(), seed=seed, iters=iters))
        names = ["patch_embed"] + [f"blocks.{i}" for i in range(args.units - 1)]
        out[key] = {n: u["loss_end"] for n, u in zip(names, st["recon_per_unit"])}
        print(f"ptqbench seed {key}: " + ", ".join(f"{n} {v:.7g}" for n, v in out[key].items()), flush=True)
    return out


def compare(a: dict, b: dict) -> None:
    names = list(next(iter(a.values())))
    print(f"{'unit':12s} {'released mean ± sd':>22s} {'ptqbench mean ± sd':>22s} {'ptqbench/released':>18s}")
    for n in names:
        ra, rb = [v[n] for v in a.values()], [v[n] for v in b.values()]
        sa = statistics.stdev(ra) if len(ra) > 1 else 0.0
        sb = statistics.stdev(rb) if len(rb) > 1 else 0.0
        print(f"{n:12s} {statistics.mean(ra):12.5g} ± {sa:<8.3g} {statistics.mean(rb):12.5g} ± {sb:<8.3g} "
              f"{statistics.mean(rb) / statistics.mean(ra):18.4f}")
    common = [s for s in a if s in b]
    if common:
        print("per seed (released / ptqbench): " + "; ".join(
            f"{s}: " + ", ".join(f"{a[s][n]:.5g}/{b[s][n]:.5g}" for n in names) for s in common))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("side", choices=["released", "ptqbench", "compare"])
    p.add_argument("files", nargs="*", help="compare: the two JSON files (released, ptqbench)")
    p.add_argument("--src", help="released: the patched APHQ-ViT checkout")
    p.add_argument("--ckpt", help="released: its calibration checkpoint (run.sh's *_calibsize_32_mse.pth)")
    p.add_argument("--calib", type=Path, help="calibration file written by docs/anchors/common/export_calib.py")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--units", type=int, default=3, help="the patch embedding and the first UNITS-1 blocks")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--iters", default="100", help="steps per unit; a comma list runs each from the same calibration")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--drop", type=float, default=0.5, help="QDrop's probability of the quantized value; 1 = none")
    data = Path(os.environ.get("PTQBENCH_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--weights", type=Path, default=data / "weights" / "deit_tiny_patch16_224.safetensors")
    p.add_argument("--out", type=Path)
    p.add_argument("--trace", type=int, default=0, help="print the first TRACE random draws (shape, caller)")
    args = p.parse_args()
    if args.side == "compare":
        a, b = (json.loads(Path(f).read_text()) for f in args.files)
        compare(a, b)
        return
    torch.set_num_threads(1)
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    args.iters_list = [int(i) for i in args.iters.split(",")]
    if args.trace:
        trace_draws(args.trace)
    res = released(args) if args.side == "released" else ours(args)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
