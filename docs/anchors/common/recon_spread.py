"""ptqbench's own spread over reconstruction random streams, from one calibration.

    python docs/anchors/common/recon_spread.py --seeds 0,1,2 [--also brecq] [--out spread.json] -- \
        method=qdrop bits=w4a4 method.iters=100 method.batch_size=8 calib.size=32 calib.seed=0

A released run of the reconstruction family is one draw of its random stream (batch order and
QDrop masks: the release's global `--seed`); so is a ptqbench run (`method.recon_seed`). To tell a
systematic difference from the streams, both sides need several draws. Calibration (the grid search
and everything before the last reconstruction) is deterministic and costs most of a run on CPU, so
this script runs it once, evaluates the model right after it (the number the released logs print as
`calib_top1`), then runs only the method's last `Reconstruct` step once per seed, each time from a
copy of the calibrated model, and evaluates each.

Nothing here re-implements the method: the job's settings are composed from conf/ as
`python -m ptqbench OVERRIDES` composes them, the steps are the method's own `steps()`, and the
evaluation is the task's. Only the seed of the last `Reconstruct` step's config is replaced. A step
that wraps others (`WithFPTeacher`, APHQ-ViT's FP teacher) is opened: the teacher copy is taken where
the wrapper takes it and kept for every seed.
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
    """The steps in run order; a WithFPTeacher is replaced by the teacher copy it takes (set on
    `qm` now, before any step ran) and its inner steps."""
    from ptqbench.methods.steps import WithFPTeacher

    out: list[Any] = []
    for s in steps:
        if isinstance(s, WithFPTeacher):
            out.append(("teacher", None))
            out.extend(flat_steps(s.steps, qm))
        else:
            out.append(s)
    return out


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="method.recon_seed values (comma-separated)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--also", default="", help="other methods (comma-separated, e.g. brecq) whose steps before "
                   "the last reconstruction equal the job's (checked): their reconstruction runs from the same "
                   "calibrated model, per seed")
    p.add_argument("overrides", nargs="+", help="the ptqbench job overrides (method=..., bits=..., ...)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    from export_calib import compose_settings  # same folder

    from ptqbench.models.families.base import FAMILIES
    from ptqbench.methods.steps import FPTeacher, Reconstruct, run_steps
    from ptqbench.pipeline import job_method, quantize

    settings, task, method, device, model, eval_data, calib = open_job(args.overrides)

    steps = list(method.steps())
    last = max((i for i, s in enumerate(flat_steps(steps, None)) if isinstance(s, Reconstruct)), default=None)
    if last is None:
        raise SystemExit(f"method={method.name} has no Reconstruct step (method.iters=0?)")
    flat = flat_steps(steps, None)
    before, recon = flat[:last], flat[last]
    recons = {method.name: recon}
    for other in filter(None, args.also.split(",")):
        o_settings = compose_settings(["logger=none", "report.enabled=false", *args.overrides, f"method={other}"])
        o_flat = flat_steps(job_method(o_settings)[1].steps(), None)
        o_last = max((i for i, s in enumerate(o_flat) if isinstance(s, Reconstruct)), default=None)
        if o_last is None or o_flat[:o_last] != before:
            raise SystemExit(f"--also {other}: its steps before the reconstruction differ from method={method.name}'s")
        recons[other] = o_flat[o_last]

    class Calibrated:  # the method with its steps cut before the last reconstruction
        plan = staticmethod(method.plan)

        @staticmethod
        def quantize(qm: Any, x: torch.Tensor) -> dict[str, Any]:
            stats: dict[str, Any] = {}
            for s in before:
                if s == ("teacher", None):
                    teacher = copy.deepcopy(qm.model)
                    qm.fp_teacher = FPTeacher(teacher, FAMILIES[qm.family].units(teacher))
                else:
                    stats.update(run_steps((s,), qm, x))
            return stats

    t0 = time.perf_counter()
    qm, stats, _ = quantize(Calibrated, model.module, calib.inputs, device, scope=task.scope(settings))
    calib_s = time.perf_counter() - t0
    res = task.evaluate(qm.model, eval_data, "eval calibrated")
    out: dict[str, Any] = {"overrides": args.overrides, "calib_s": round(calib_s, 1),
                           "calib_top1": res["top1"], "calib_top5": res["top5"], "seeds": {}}
    print(f"calibrated in {calib_s:.0f} s: top-1 {res['top1']:.3f} top-5 {res['top5']:.3f}", flush=True)
    for name, rec in recons.items():
        runs = out["seeds"] if name == method.name else out.setdefault("also", {}).setdefault(name, {})
        for seed in seeds:
            q = fresh_copy(qm, FAMILIES, FPTeacher)
            step = Reconstruct(dataclasses.replace(rec.cfg, seed=seed), rec.prefix)
            t0 = time.perf_counter()
            st = step(q, calib.inputs.to(device))
            r_s = time.perf_counter() - t0
            r = task.evaluate(q.model, eval_data, f"eval {name} seed {seed}")
            s_iter = st[f"{rec.prefix}recon_s_per_iter"]
            runs[seed] = {"top1": r["top1"], "top5": r["top5"], "recon_s": round(r_s, 1), "s_per_unit_step": s_iter}
            print(f"{name} recon_seed {seed}: top-1 {r['top1']:.3f} top-5 {r['top5']:.3f} ({r_s:.0f} s, "
                  f"{s_iter:.4f} s per unit step)", flush=True)
            del q
        top1 = [v["top1"] for v in runs.values()]
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        runs_stats = {"mean_top1": statistics.mean(top1), "stdev_top1": sd}
        if name == method.name:
            out.update(runs_stats)
        print(f"{name} top-1 over seeds {seeds}: mean {runs_stats['mean_top1']:.3f}, sd {sd:.3f}, "
              f"min {min(top1):.3f}, max {max(top1):.3f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
