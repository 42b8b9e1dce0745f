"""ptqbench's own spread over reconstruction random streams, from one calibration.

    python docs/anchors/common/recon_spread.py --seeds 0,1,2 [--also brecq] [--out spread.json] -- \
        method=qdrop bits=w4a4 method.iters=100 method.batch_size=8 calib.size=32 calib.seed=0

A released run of the reconstruction family is one draw of its random stream (batch order and
QDrop masks: the release's global `--seed`); so is a ptqbench run (`method.recon_seed`). To tell a
systematic difference from the streams, both sides need several draws. Calibration (the grid search
and everything before the first reconstruction) is deterministic and costs most of a run on CPU, so
this script runs it once, evaluates the model right after it (the number the released logs print as
`calib_top1`), then runs the rest of the method's steps (from the first step that holds a
`Reconstruct`, e.g. I&S-ViT's stage one, up to the end) once per seed, each time from a copy of the
calibrated model, and evaluates each.

Nothing here re-implements the method: the job's settings are composed from conf/ as
`python -m ptqbench OVERRIDES` composes them and the steps are the method's own `steps()`: those
before the cut as the job has them (so APHQ-ViT's MLP stage, seeded by the job's `recon_seed`, runs
once; an `--also` method's are checked equal), those after it composed with `method.recon_seed=SEED`
appended; the evaluation is the task's. A step that wraps others at the top (`WithFPTeacher`,
APHQ-ViT's FP teacher) is opened: the teacher copy is taken where the wrapper takes it and kept for
every seed.

APHQ-ViT's MLP stage draws its own random stream on each side, so the two sides calibrate
different ReLU models. `--mlp-weights` takes the release's MLP stage instead: right after
ptqbench's MLP stage, every block's fc1 and fc2 are replaced by those of the release's
`<model>_reconstructed.pth` (every other weight is checked equal first), so the grid search and
the block reconstruction start where the release's do. A diagnostic that separates the two
stages, not a way to run the method.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[3]


def flat_steps(steps: Any, qm: Any) -> list[Any]:
    """The steps in run order; a WithFPTeacher is replaced by ("teacher", itself without its inner
    steps), where it takes its teacher copy, then its inner steps. (Without them, two methods'
    teachers compare equal when they copy the model the same way.)"""
    from ptqbench.methods.steps import WithFPTeacher

    out: list[Any] = []
    for s in steps:
        if isinstance(s, WithFPTeacher):
            out.append(("teacher", dataclasses.replace(s, steps=())))
            out.extend(flat_steps(s.steps, qm))
        else:
            out.append(s)
    return out


def holds_reconstruct(step: Any) -> bool:
    """Whether `step` is a Reconstruct or wraps one (Timed, WeightsFP)."""
    from ptqbench.methods.steps import Reconstruct, walk_steps

    return not isinstance(step, tuple) and any(isinstance(s, Reconstruct) for s in walk_steps((step,)))


def split_steps(overrides: list[str], name: str, seed: int | None) -> tuple[list[Any], list[Any]]:
    """method=`name`'s steps for the job `overrides` (with `method.recon_seed=seed`, or the job's
    own when None), cut before the first step that holds a Reconstruct: (before, from there on)."""
    from export_calib import compose_settings  # same folder

    from ptqbench.pipeline import job_method

    extra = [] if seed is None else [f"method.recon_seed={seed}"]
    settings = compose_settings(["logger=none", "report.enabled=false", *overrides, f"method={name}", *extra])
    flat = flat_steps(job_method(settings)[1].steps(), None)
    cut = next((i for i, step in enumerate(flat) if holds_reconstruct(step)), None)
    if cut is None:
        raise SystemExit(f"method={name} has no Reconstruct step (method.iters=0?)")
    return flat[:cut], flat[cut:]


def fresh_copy(qm: Any, families: Any, teacher_cls: Any) -> Any:
    """A deep copy of the QuantizedModel whose units (and FP teacher's units) are rebuilt on the
    copied modules: a unit's forward may close over its model, and deepcopy keeps closures as they
    are, so copied units would still run the original model."""
    q = copy.deepcopy(qm)
    q.units = families[q.family].units(q.model)
    if q.fp_teacher is not None:
        q.fp_teacher = teacher_cls(q.fp_teacher.model, families[q.family].units(q.fp_teacher.model))
    return q


def open_job(overrides: list[str]) -> tuple[Any, ...]:
    """The classification job `python -m ptqbench OVERRIDES` would run, up to quantization (no cache,
    no logger): (settings, task, method, device, model, eval_data, calib)."""
    sys.path.insert(0, str(REPO))
    from export_calib import compose_settings  # same folder

    from ptqbench.cache import ContentCache
    from ptqbench.launch import configure_threads
    from ptqbench.pipeline import job_method
    from ptqbench.tasks import get_task

    settings = compose_settings(["logger=none", "report.enabled=false", *overrides])
    configure_threads(settings.run.threads, None)  # `threads=N` as a job applies it
    task = get_task(settings.task.name)
    if task.name != "classification":
        raise SystemExit("only classification jobs")
    _, method = job_method(settings)
    torch.manual_seed(settings.run.seed)
    device = task.device(settings)
    data = task.open_data(settings, method)
    model = task.build_model(settings, device)
    eval_data = task.evaluation_data(settings, data, model, Path("/tmp"))
    calib = task.calibration_data(settings, data, model, ContentCache(Path("/nonexistent"), enabled=False))
    return settings, task, method, device, model, eval_data, calib


def load_mlp_weights(model: torch.nn.Module, path: str) -> int:
    """Copy every `.mlp.fc1` / `.mlp.fc2` weight and bias of the state dict at `path` into `model`
    after checking that every other weight equals the model's; returns how many were copied."""
    released = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    if set(released) != set(params):
        raise SystemExit(f"--mlp-weights {path}: its names differ from the model's: "
                         f"{sorted(set(released) ^ set(params))[:4]}")
    mlp = [n for n in params if ".mlp.fc1." in n or ".mlp.fc2." in n]
    differ = [n for n in params if n not in mlp and not torch.equal(params[n].detach().cpu(), released[n])]
    if differ:
        raise SystemExit(f"--mlp-weights {path}: weights outside the MLPs differ, e.g. {differ[:3]}")
    with torch.no_grad():
        for n in mlp:
            params[n].copy_(released[n])
    return len(mlp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="method.recon_seed values (comma-separated)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--also", default="", help="other methods (comma-separated, e.g. brecq) whose steps before "
                   "the first reconstruction equal the job's (checked): their reconstruction runs from the same "
                   "calibrated model, per seed")
    p.add_argument("--mlp-weights", default=None, help="APHQ-ViT: after ptqbench's MLP stage, take fc1/fc2 from "
                   "this state dict (the release's <model>_reconstructed.pth)")
    p.add_argument("overrides", nargs="+", help="the ptqbench job overrides (method=..., bits=..., ...)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    from ptqbench.models.families.base import FAMILIES
    from ptqbench.methods.steps import FPTeacher, ReluMLPReconstruct, run_steps, walk_steps
    from ptqbench.pipeline import quantize
    from ptqbench.profiling import process_peak_rss_mb
    from ptqbench.quant.base import Quantizer

    settings, task, method, device, model, eval_data, calib = open_job(args.overrides)

    names = [method.name, *filter(None, args.also.split(","))]
    before = split_steps(args.overrides, method.name, None)[0]
    for name in names[1:]:
        if split_steps(args.overrides, name, None)[0] != before:
            raise SystemExit(f"--also {name}: its steps before the reconstruction differ from method={method.name}'s")
    tails = {name: {seed: split_steps(args.overrides, name, seed)[1] for seed in seeds} for name in names}
    if args.mlp_weights:  # before the calibration, which takes most of an hour on CPU
        if not any(isinstance(t, ReluMLPReconstruct) for t in walk_steps(s for s in before if not isinstance(s, tuple))):
            raise SystemExit(f"--mlp-weights: method={method.name} has no MLP stage before its reconstruction "
                             "(only APHQ-ViT with method.relu_mlp=true has one)")
        if not Path(args.mlp_weights).is_file():
            raise SystemExit(f"--mlp-weights {args.mlp_weights}: no such file")

    class Calibrated:  # the method with its steps cut before the first reconstruction
        plan = staticmethod(method.plan)

        @staticmethod
        def quantize(qm: Any, x: torch.Tensor) -> dict[str, Any]:
            stats: dict[str, Any] = {}
            for s in before:
                if isinstance(s, tuple):  # ("teacher", WithFPTeacher)
                    qm.fp_teacher = s[1].teacher_of(qm)
                else:
                    stats.update(run_steps((s,), qm, x))
                    if args.mlp_weights and any(isinstance(t, ReluMLPReconstruct) for t in walk_steps((s,))):
                        n = load_mlp_weights(qm.model, args.mlp_weights)
                        print(f"took {n} MLP tensors from {args.mlp_weights}", flush=True)
                        stats["mlp_weights_from"] = args.mlp_weights
            return stats

    t0 = time.perf_counter()
    qm, stats, _ = quantize(Calibrated, model.module, calib.inputs, device, scope=task.scope(settings))
    calib_s = time.perf_counter() - t0
    out: dict[str, Any] = {"overrides": args.overrides, "calib_s": round(calib_s, 1), "seeds": {},
                           "mlp_weights": args.mlp_weights}
    unfitted = [m.qname for m in qm.model.modules() if isinstance(m, Quantizer) and m.enabled and not m.calibrated]
    if unfitted:  # e.g. I&S-ViT: the weight quantizers are fitted after stage one
        print(f"calibrated in {calib_s:.0f} s; not evaluated: {len(unfitted)} quantizers (e.g. {unfitted[0]}) "
              "are fitted by the steps after the cut", flush=True)
    else:
        res = task.evaluate(qm.model, eval_data, "eval calibrated")
        out.update(calib_top1=res["top1"], calib_top5=res["top5"])
        print(f"calibrated in {calib_s:.0f} s: top-1 {res['top1']:.3f} top-5 {res['top5']:.3f}", flush=True)
    for name in names:
        runs = out["seeds"] if name == method.name else out.setdefault("also", {}).setdefault(name, {})
        for seed in seeds:
            q = fresh_copy(qm, FAMILIES, FPTeacher)
            t0 = time.perf_counter()
            st = run_steps(tails[name][seed], q, calib.inputs.to(device))
            r_s = time.perf_counter() - t0
            r = task.evaluate(q.model, eval_data, f"eval {name} seed {seed}")
            s_iter = {k: v for k, v in st.items() if k.endswith("recon_s_per_iter")}
            runs[seed] = {"top1": r["top1"], "top5": r["top5"], "recon_s": round(r_s, 1), "s_per_unit_step": s_iter}
            print(f"{name} recon_seed {seed}: top-1 {r['top1']:.3f} top-5 {r['top5']:.3f} ({r_s:.0f} s, "
                  f"s per unit step {s_iter})", flush=True)
            del q
        top1 = [v["top1"] for v in runs.values()]
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        runs_stats = {"mean_top1": statistics.mean(top1), "stdev_top1": sd}
        if name == method.name:
            out.update(runs_stats)
        print(f"{name} top-1 over seeds {seeds}: mean {runs_stats['mean_top1']:.3f}, sd {sd:.3f}, "
              f"min {min(top1):.3f}, max {max(top1):.3f}", flush=True)
    # ptqbench's phase meters restart the kernel's high-water mark, so /usr/bin/time's maximum
    # covers only the time since the last one; this is the whole script's peak
    out["peak_rss_mb"] = process_peak_rss_mb()
    if out["peak_rss_mb"] is not None:
        print(f"peak RSS of this process: {out['peak_rss_mb']:.0f} MiB", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    from ptqbench.heap import rerun_without_tcache

    rerun_without_tcache()  # as `python -m ptqbench` runs its jobs (glibc's per-thread cache off)
    sys.exit(main())
