"""QDrop / BRECQ / APHQ-ViT reconstruction of the first units, released code vs ptqbench, over seeds.

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

`--method aphq` runs APHQ-ViT's block reconstruction (`configs/<W>bit/best.py`: the loss weighted by
the average perturbation Hessian, computed on the FP GELU model before each unit trains) on the ReLU
model of the release's MLP stage (`--mlp-weights`, the release's `<model>_reconstructed.pth`; the
calibration checkpoint must be the same run's). Both sides then report each unit's unweighted
element-mean squared error (ptqbench's `loss_reduction: mean`), the same formula on both sides.

    # released side (the patched checkout that docs/anchors/aphq/run.sh prepares, KEEP_SRC=1)
    python docs/anchors/aphq/unit_spread.py released --src <checkout>/APHQ-ViT \
        --ckpt <checkout>/checkpoint/quant_result/<run>/deit_tiny_w4_a4_calibsize_32_mse.pth \
        --calib /tmp/aphq_work/runs/calib_deit_tiny_n32_seed0.pt --bits 4 --units 3 --seeds 0,1,2,3,4 --out rel.json
    # ptqbench side
    python docs/anchors/aphq/unit_spread.py ptqbench --calib ... --bits 4 --units 3 --seeds 0,1,2,3,4 --out ours.json
    python docs/anchors/aphq/unit_spread.py compare rel.json ours.json
    # APHQ-ViT: add `--method aphq --mlp-weights <checkout>/checkpoint/quant_result/<run>/deit_tiny_reconstructed.pth`
    # to both sides (the `best` run's checkpoints)

Past the first units: `--units 14` reconstructs every unit (the patch embedding, the 12 blocks, the
head). Give the ptqbench side the same `--ckpt`: it then takes the release's calibration (folded
weights, every quantizer's scale and zero point) instead of its own 40-minute grid search of the
whole model, which gives the same values (`compare_calibration.py`). `--eval` then evaluates the
calibrated model and each side's whole reconstructed model (the released one after the end of its
`reconstruct_model`: hard rounding written, every layer quantized) on the validation images,
through ptqbench's loader on both sides, and `compare` prints both top-1s and on how many images
the two predict the same class (`--iters 0`: the calibrated models only).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[3]
SEED_STRIDE = 1000003  # ptqbench's per-unit generator: seed * SEED_STRIDE + unit index
EVAL = "eval"  # the key of the validation results in a side's JSON (`--eval`)


RELEASED_CONFIG = {"qdrop": "qdrop_baseline", "aphq": "best"}


def unit_loss(out: torch.Tensor, target: torch.Tensor, method: str) -> float:
    """The loss ptqbench reports for the method's units (`ReconConfig.loss_reduction`), unweighted:
    QDrop's squared error summed over dim 1 (tokens) and averaged over the rest (the released
    `lp_loss`); APHQ-ViT's element mean."""
    err = (out - target).pow(2)
    return float(err.sum(1).mean() if method == "qdrop" else err.mean())


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
    cfg = __import__(RELEASED_CONFIG[args.method]).Config()
    cfg.a_bit = cfg.qhead_a_bit = cfg.w_bit = args.bits  # run.sh's setting for every config
    calib = torch.load(args.calib, weights_only=False)
    ds = torch.utils.data.TensorDataset(calib["images"][:32], calib["labels"][:32])
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.optim_batch_size, shuffle=False)
    fp = timm.create_model("deit_tiny_patch16_224", checkpoint_path=str(args.weights)).eval()
    relu = args.method == "aphq"
    student = copy.deepcopy(fp)
    if relu:  # test_quant.py --reconstruct-mlp: ReLU MLPs, then the MLP stage's weights (here: loaded)
        for name, module in student.named_modules():
            if name.split(".")[-1] == "mlp":
                module.act = torch.nn.ReLU()
        student.load_state_dict(torch.load(args.mlp_weights, map_location="cpu"))
    ns = types.SimpleNamespace(load_calibrate_checkpoint=args.ckpt, load_optimize_checkpoint=None)
    names = unit_names(args.units)
    out: dict = {}
    if args.eval is not None:  # load_model leaves every layer quantized (quant_forward), as the release evaluates it
        model = wrap_modules_in_net(copy.deepcopy(student), cfg, reparam=False, recon=relu).eval()
        out[EVAL] = {"calibrated": validation_top1(test_quant.load_model(model, ns, torch.device("cpu")), args)}
    for iters, seed in [(i, s) for i in args.iters_list if i > 0 for s in args.seed_list]:
        key = f"{seed}@{iters}"
        model = wrap_modules_in_net(copy.deepcopy(student), cfg, reparam=False, recon=relu).eval()
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
                losses.append(unit_loss(torch.cat([block(x) for x in x_q.split(args.batch)]), target, args.method))
            br.set_block_mode(block, "raw")
        out[key] = dict(zip(names, losses))
        print(f"released seed {key}: " + ", ".join(f"{n} {v:.7g}" for n, v in out[key].items()), flush=True)
        if args.eval is not None and len(names) == 14:
            for module in model.modules():  # the end of the released reconstruct_model, as a full run does
                if hasattr(module, "mode"):
                    module.mode = "quant_forward"
                if hasattr(module, "w_quantizer") and hasattr(module.w_quantizer, "alpha"):
                    module.weight.data.copy_(module.w_quantizer.get_hard_value(module.weight.data))
                    del module.w_quantizer.alpha
                    module.w_quantizer.round_mode = "nearest"
            out.setdefault(EVAL, {})[key] = validation_top1(model, args)
    return out


def ours(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "docs" / "anchors" / "common"))
    import dataclasses

    import timm

    from ptqbench.algorithms import reconstruction
    from ptqbench.algorithms.grid_search import search_model
    from ptqbench.algorithms.mlp_recon import relu_mlps
    from ptqbench.methods import Bits, build_method
    from ptqbench.methods.steps import Calibrate
    from ptqbench.models import make_quantizable
    from ptqbench.models.families.base import FAMILIES

    calib = torch.load(args.calib, weights_only=False)["images"][:32]
    model = timm.create_model("deit_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(args.weights))).eval()
    inputs = "qdrop" if args.drop < 1.0 else "quantized"
    keys = {"name": args.method, "iters": 1, "batch_size": args.batch, "inputs": inputs, "drop_prob": args.drop,
            "search_images": None, "progress": False}
    if args.method == "aphq":
        keys["teacher_attention"] = args.teacher_attention
    method = build_method(keys, Bits(args.bits, args.bits))
    qm = make_quantizable(model, method.plan())
    teacher = None
    if args.method == "aphq":  # the FP GELU teacher (WithFPTeacher), then the release's ReLU MLPs
        from recon_spread import load_mlp_weights  # same folder as export_calib

        teacher = method.steps()[0].teacher_of(qm)  # APHQ-ViT's WithFPTeacher, taken before the MLP stage
        relu_mlps(qm.units)
        load_mlp_weights(qm.model, args.mlp_weights)
    Calibrate()(qm, calib)
    c = method.config
    if args.ckpt:  # the release's calibration (bit-identical to the grid search, compare_calibration.py)
        print(f"ptqbench: {load_released_calibration(qm.model, args.ckpt)} quantizers from {args.ckpt}", flush=True)
    else:
        search_model(qm.model, qm.units[:args.units], calib, c.search_config(), qm.reparam_pairs, c.exact_padding)
    names = unit_names(args.units)
    out: dict = {}
    if args.eval is not None:
        out[EVAL] = {"calibrated": validation_top1(qm.model, args)}
    for iters, seed in [(i, s) for i in args.iters_list if i > 0 for s in args.seed_list]:
        key = f"{seed}@{iters}"
        q = copy.deepcopy(qm)
        q.units = FAMILIES[q.family].units(q.model)  # units close over their model: rebuild on the copy
        cfg = dataclasses.replace(c.engine_config(), seed=seed, iters=iters)
        if teacher is None:
            st = reconstruct(q, args.units, calib, cfg)
        else:
            st = reconstruct_prefix(reconstruction, q, args.units, calib, cfg, teacher)
        out[key] = {n: u["loss_end"] for n, u in zip(names, st)}
        print(f"ptqbench seed {key}: " + ", ".join(f"{n} {v:.7g}" for n, v in out[key].items()), flush=True)
        if args.eval is not None and len(names) == 14:
            out.setdefault(EVAL, {})[key] = validation_top1(q.model, args)
    return out


@functools.lru_cache(maxsize=None)
def evaluation_job(method: str, bits: int, images: int) -> tuple[Any, Any]:
    """ptqbench's classification task and its evaluation data for the first `images` validation
    images (0: all), built once per process for every model a run evaluates."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "docs" / "anchors" / "common"))
    from recon_spread import open_job

    overrides = [f"method={method}", f"bits=w{bits}a{bits}", "calib.size=32", "threads=1", "data.workers=0"]
    if images:
        overrides.append(f"data.eval_limit={images}")
    _, task, _, _, _, eval_data, _ = open_job(overrides)
    return task, eval_data


def validation_top1(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Top-1, top-5 and the predicted classes of a whole model (calibrated or reconstructed) on the
    first `--eval` validation images (0: all), read by ptqbench's classification loader on both
    sides, so both models see the same tensors."""
    task, eval_data = evaluation_job(args.method, args.bits, args.eval)
    res = task.evaluate(model.eval(), eval_data, "eval")
    print(f"top-1 {res['top1']:.3f}, top-5 {res['top5']:.3f} on {len(res['logits'])} images", flush=True)
    return {"top1": res["top1"], "top5": res["top5"], "pred": res["logits"].argmax(1).tolist()}


def unit_names(units: int) -> list[str]:
    """DeiT's first `units` reconstruction units in forward order: the patch embedding, the 12 blocks,
    the head (the 14th)."""
    if not 1 <= units <= 14:
        raise SystemExit(f"--units {units}: DeiT has 14 units (patch_embed, blocks.0-11, head)")
    return (["patch_embed"] + [f"blocks.{i}" for i in range(12)] + ["head"])[:units]


def load_released_calibration(model: torch.nn.Module, ckpt: str) -> int:
    """Put the release's calibrated state into ptqbench's calibrated model: its weights (the same
    names as timm's) and every quantizer's scale and zero point (compare_calibration.py's map).
    The grid search of the whole model takes 40 minutes a side and gives the same values
    (`compare_calibration.py`); this lets the check run past the first units. Returns how many
    quantizers were set; any released quantizer left out is named."""
    from compare_calibration import quantizer_map  # same folder

    from ptqbench.quant.calibration import quantizers

    sd = torch.load(ckpt, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    weights = [k for k in sd if "_quantizer." not in k]
    missing = [k for k in weights if k not in params]
    if missing:
        raise SystemExit(f"--ckpt {ckpt}: weights the model does not have, e.g. {missing[:3]}")
    names = quantizer_map(len(model.blocks))
    ours, seen = quantizers(model), set()
    with torch.no_grad():
        for k in weights:
            params[k].copy_(sd[k])
        for r, o in names.items():
            scale, zero = sd[f"{r}.scale"].reshape(-1), sd[f"{r}.zero_point"].round().reshape(-1)
            # the grid search's layouts: per tensor, per output channel (weights), per head (matmuls)
            axis = None if scale.numel() == 1 else 0 if ours[o].role == "weight" else 1
            ours[o].set_params(scale[0] if axis is None else scale, zero[0] if axis is None else zero, axis)
            seen.update((f"{r}.scale", f"{r}.zero_point"))
    left = sorted(k for k in sd if "_quantizer." in k and k not in seen)
    if left:
        print(f"released quantizer state not used: {left}", flush=True)
    return len(names)


def reconstruct(q: Any, units: int, calib: torch.Tensor, cfg: Any) -> list[dict]:
    """ptqbench's reconstruction of the first `units` units: their per-unit statistics."""
    from ptqbench.algorithms.reconstruction import reconstruct as engine

    return engine(q.model, q.units[:units], calib, cfg)["recon_per_unit"]


class PrefixDone(Exception):
    """Raised when the engine reaches the first unit after the prefix."""


def reconstruct_prefix(module: types.ModuleType, q: Any, units: int, calib: torch.Tensor, cfg: Any,
                       teacher: Any) -> list[dict]:
    """The first `units` units with an FP teacher: the engine needs the teacher's whole model (each
    unit's Hessian differentiates the logits through every later unit) and as many units in the
    model as in the teacher, so it runs over all of them and is stopped when it reaches unit
    `units`, whose quantizers the prefix's grid search did not fit."""
    train, done = module._train_unit, []

    def until_prefix(*a: Any, **k: Any) -> dict:
        if a[6] >= units:  # _train_unit(unit, layers, x_q, x_fp, target, cfg, i, ...)
            raise PrefixDone
        done.append(train(*a, **k))
        return done[-1]

    module._train_unit = until_prefix
    try:
        module.reconstruct(q.model, q.units, calib, cfg, None, teacher)
    except PrefixDone:
        pass
    finally:
        module._train_unit = train
    return done


def merged(files: str) -> dict:
    """One side's results from a comma list of its JSON files (runs of other seeds or steps)."""
    out: dict = {}
    for f in files.split(","):
        res = json.loads(Path(f).read_text())
        out.setdefault(EVAL, {}).update(res.pop(EVAL, {}))
        if set(res) & set(out):
            raise SystemExit(f"{f}: results for {sorted(set(res) & set(out))} already read from another file")
        out.update(res)
    return out


def steps_of(key: str) -> str:
    """The step count in a result key, `seed@steps`; "" in files written before the keys carried it
    (2026-12-08), where a run of one step count keyed its results by the seed alone."""
    return key.partition("@")[2]


def compare(a: dict, b: dict) -> None:
    evals = a.pop(EVAL, {}), b.pop(EVAL, {})
    names = list(next(iter(a.values()))) if a else []  # none with --iters 0 (the calibrated models only)
    for steps in sorted({steps_of(k) for k in a}, key=lambda t: (len(t), t)):  # one table per step count
        ga = [v for k, v in a.items() if steps_of(k) == steps]
        gb = [v for k, v in b.items() if steps_of(k) == steps]
        if not gb:
            continue
        print(f"{'unit':12s} {'released mean ± sd':>22s} {'ptqbench mean ± sd':>22s} {'ptqbench/released':>18s}"
              f"   ({f'{steps} steps' if steps else 'keyed by seed alone'}: {len(ga)} and {len(gb)} runs)")
        for n in names:
            ra, rb = [v[n] for v in ga], [v[n] for v in gb]
            sa = statistics.stdev(ra) if len(ra) > 1 else 0.0
            sb = statistics.stdev(rb) if len(rb) > 1 else 0.0
            print(f"{n:12s} {statistics.mean(ra):12.5g} ± {sa:<8.3g} {statistics.mean(rb):12.5g} ± {sb:<8.3g} "
                  f"{statistics.mean(rb) / statistics.mean(ra):18.4f}")
    common = [s for s in a if s in b]
    if common:
        print("per seed (released / ptqbench): " + "; ".join(
            f"{s}: " + ", ".join(f"{a[s][n]:.5g}/{b[s][n]:.5g}" for n in names) for s in common))
    for key in [k for k in evals[0] if k in evals[1]]:
        ra, rb = evals[0][key], evals[1][key]
        same = sum(x == y for x, y in zip(ra["pred"], rb["pred"]))
        print(f"whole model, {key}: top-1 released {ra['top1']:.3f} / ptqbench {rb['top1']:.3f}, top-5 "
              f"{ra['top5']:.3f} / {rb['top5']:.3f}, the same class on {same}/{len(ra['pred'])} images")
    for side, ev in zip(("released", "ptqbench"), evals):  # for scale: two streams of one code (steps alike or unknown)
        keys = [k for k in ev if k != "calibrated"]
        for i, k1 in enumerate(keys):
            for k2 in [k for k in keys[i + 1:] if steps_of(k) in (steps_of(k1), "") or not steps_of(k1)]:
                same = sum(x == y for x, y in zip(ev[k1]["pred"], ev[k2]["pred"]))
                print(f"{side} seeds {k1} and {k2}: the same class on {same}/{len(ev[k1]['pred'])} images")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("side", choices=["released", "ptqbench", "compare"])
    p.add_argument("files", nargs="*", help="compare: the released and the ptqbench JSON (each a comma list of "
                   "files, merged)")
    p.add_argument("--src", help="released: the patched APHQ-ViT checkout")
    p.add_argument("--ckpt", help="released: its calibration checkpoint (run.sh's *_calibsize_32_mse.pth); "
                   "ptqbench: when given, that calibration instead of ptqbench's grid search")
    p.add_argument("--calib", type=Path, help="calibration file written by docs/anchors/common/export_calib.py")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--units", type=int, default=3, help="the patch embedding and the first UNITS-1 blocks "
                   "(14: every unit, with the head)")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--iters", default="100", help="steps per unit; a comma list runs each from the same calibration "
                   "(0: none, for --eval of the calibrated model alone)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--drop", type=float, default=0.5, help="QDrop's probability of the quantized value; 1 = none")
    p.add_argument("--method", choices=sorted(RELEASED_CONFIG), default="qdrop",
                   help="qdrop: the released qdrop_baseline config; aphq: best (needs --mlp-weights)")
    p.add_argument("--teacher-attention", default="timm", help="aphq: method.teacher_attention (timm, unfused)")
    p.add_argument("--mlp-weights", type=Path, help="aphq: the release's <model>_reconstructed.pth of the run "
                   "whose calibration checkpoint is used")
    data = Path(os.environ.get("PTQBENCH_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--weights", type=Path, default=data / "weights" / "deit_tiny_patch16_224.safetensors")
    p.add_argument("--out", type=Path)
    p.add_argument("--eval", type=int, nargs="?", const=0, default=None,
                   help="evaluate the calibrated model and, with --units 14, each whole reconstructed model on the "
                   "first EVAL validation images (none given: all), through ptqbench's loader on both sides")
    p.add_argument("--trace", type=int, default=0, help="print the first TRACE random draws (shape, caller)")
    args = p.parse_args()
    if args.side == "compare":
        compare(*(merged(f) for f in args.files))
        return
    if args.method == "aphq" and not (args.mlp_weights and args.mlp_weights.is_file()):
        p.error(f"--method aphq needs --mlp-weights, the release's <model>_reconstructed.pth (got {args.mlp_weights})")
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
