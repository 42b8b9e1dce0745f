"""`python -m ptqbench.bench [--parts cost,eval,sweep,recon] [--out FILE]`: the benchmark suite.

Prints Markdown tables and writes them, with the machine they ran on, to `--out` (default
results/benchmarks/bench_<host>_<device>.md). Every cell runs in a fresh process, so memory peaks
do not leak between cells. The parts (docs/benchmarks.md):

    python -m ptqbench.bench                                          # cost, eval, sweep
    python -m ptqbench.bench --parts cost --cost-models deit_tiny,vit_base --cost-calib 32,128
    python -m ptqbench.bench --parts eval --eval-models deit_tiny --eval-methods repq --eval-batch 100
    python -m ptqbench.bench --parts recon --recon-models deit_small --recon-batch 8,32
    python -m ptqbench.bench --parts decode --decode-synthetic 50000    # decode vs decoded-array read (docs/cache.md)
    python -m ptqbench.bench --parts det_eval --det-images 2 --det-repeats 2 --det-top-ops 20
    python -m ptqbench.bench --parts job_eval --threads 1    # a job's FP evaluation: reused heap vs fresh mappings
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before torch loads: the re-run replaces this process
    from ptqbench.heap import rerun_without_tcache

    rerun_without_tcache()

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ptqbench.fileio import write_text_atomic
from ptqbench.paths import REPO_ROOT


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.node()}: {cpu} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, {gpu}; "
            f"torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average at start {load}; {time.strftime('%Y-%m-%d %H:%M')}")


def run_cell(kind: str, threads: int | None, **kw: Any) -> Any:
    """One measurement in a fresh process (the cell's row, or rows); a failure is a row saying why, not a dead suite."""
    cmd = [sys.executable, "-m", "ptqbench.bench", "--cell", json.dumps({"kind": kind, "kw": kw, "threads": threads})]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()
        return {**kw, "error": lines[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


PARTS = ("cost", "eval", "sweep", "recon", "decode", "det_eval", "profile", "job_eval")


def _cell_main(spec: dict[str, Any]) -> None:
    from ptqbench.bench import cells
    from ptqbench.bench.recon_step import recon_step

    from ptqbench.bench.decode import decode_speed
    from ptqbench.bench.det_eval import det_eval
    from ptqbench.bench.job_eval import job_eval

    kinds = {"cost": cells.cost, "eval_overhead": cells.eval_overhead, "recon_step": recon_step, "decode": decode_speed,
             "eval_profile": cells.profile_eval,
             "det_eval": det_eval, "job_eval": job_eval}
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    print(json.dumps(kinds[spec["kind"]](**spec["kw"])))


def _csv(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated integers, e.g. 32,128") from None


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols[:2]) + f" | failed: {r['error']} |")
        else:
            lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _check_recon_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The recon part's settings, refused before any cell runs."""
    from ptqbench.bench.recon_step import reconstructing_methods

    known = reconstructing_methods()
    bad = [m for m in _csv(args.recon_methods or "") if m not in known]
    if bad:
        ap.error(f"--recon-methods: {', '.join(bad)} has no block reconstruction; choose from {','.join(known)}")
    if args.recon_steps < 1 or not args.recon_batch or min(args.recon_batch) < 1 or args.recon_calib < max(args.recon_batch):
        ap.error(f"--recon-steps {args.recon_steps}, --recon-batch {args.recon_batch}, --recon-calib {args.recon_calib}: "
                 "use at least 1 step, batches of at least 1, and at least as many images as the largest batch")


def method_options(method: str, recon_iters: int) -> dict[str, Any]:
    """The bench's bounded settings: every reconstructing method (its Config has `iters`) with
    `recon_iters` steps per unit and stage at batch 8 (the papers' budgets are GPU jobs), aiq
    evaluated folded (`lowrank_eval`), the grid-search calibration of qdrop, brecq, aphq and fimaq
    with one round of 32 candidates (the fewest for its 16 zero points; default 3 of 128), ptq4vit
    and tsptq with one search round of 20 candidates (their default: 3 of 100)."""
    from dataclasses import fields

    from ptqbench.methods.base import METHODS

    keys = {f.name for f in fields(METHODS[method].Config)} if method in METHODS else set()
    if "iters" in keys:
        bounded: dict[str, Any] = {"iters": recon_iters, "batch_size": 8}
        if "grid_rounds" in keys:
            bounded |= {"grid_rounds": 1, "grid_candidates": 32}
        # aiq: the fast evaluation; the eval cell also times the two-path default beside it
        return {**bounded, "lowrank_eval": "folded"} if method == "aiq" else bounded
    return {"search_rounds": 1, "search_candidates": 20} if "search_rounds" in keys else {}


def sweep_times(models: str, methods: str, bits: str, eval_limit: int, calib: int, threads: int | None) -> list[dict[str, Any]]:
    """Wall time of one CLI sweep three times over one fresh results folder: cold (empty cache),
    warm (resume=false: every job reruns, the FP baselines and calibration batches are cache
    hits), relaunched (resume=true: every job is skipped by its record)."""
    results = Path(tempfile.mkdtemp(prefix="ptqbench-bench-"))
    base = ["-m", f"model={models}", f"method={methods}", f"bits={bits}", f"data.eval_limit={eval_limit}",
            f"calib.size={calib}", "model.pretrained=false", "logger=none", "report.enabled=false",
            f"results_dir={results}"] + ([f"threads={threads}"] if threads else [])
    n_jobs = len(models.split(",")) * len(methods.split(",")) * len(bits.split(","))
    rows = []
    try:
        for phase, extra in (("cold", []), ("warm (cache hits, resume=false)", ["resume=false"]),
                             ("relaunch (resume=true)", [])):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "ptqbench", *base, *extra], capture_output=True, text=True,
                                 cwd=REPO_ROOT, env={**os.environ, "WANDB_SILENT": "true"})
            secs = time.perf_counter() - t0
            recs = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
            cached = sum(bool(r.get("fp", {}).get("cached")) for r in recs)
            rows.append({"phase": phase, "jobs": n_jobs, "wall_s": round(secs, 1), "rc": out.returncode,
                         "records_ok": sum(r.get("status") == "ok" for r in recs),
                         "fp_cache_hits_in_records": cached})
            if out.returncode != 0:
                rows[-1]["error"] = (out.stderr.strip().splitlines() or ["?"])[-1][:200]
    finally:
        shutil.rmtree(results, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="cost,eval,sweep", help=f"comma-separated, of {','.join(PARTS)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cost-models", "--cost-model", dest="cost_models", default="deit_tiny")
    ap.add_argument("--cost-methods", default="minmax,percentile,repq,ptq4vit,tsptq,gptq,erq,dopq,aiq")
    ap.add_argument("--cost-bits", default="w4a4")
    ap.add_argument("--cost-calib", type=_ints, default=[32], help="calibration sizes, e.g. 32,128")
    ap.add_argument("--job-eval-batch", type=int, default=100, help="job_eval part: evaluation batch (the job default)")
    ap.add_argument("--job-eval-limit", type=int, default=None, help="job_eval part: evaluate this many images (all)")
    ap.add_argument("--recon-iters", type=int, default=30, help="iterations per unit and stage for every reconstructing method (cost, eval, profile parts)")
    ap.add_argument("--eval-models", default="deit_tiny,swin_tiny")
    ap.add_argument("--eval-methods", default="repq,minmax,dopq,aiq")
    ap.add_argument("--eval-bits", default="w4a4")
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--eval-repeats", type=int, default=7)
    ap.add_argument("--eval-compile", action="store_true", help="eval part: the quantized side through eval.compile (torch.compile)")
    ap.add_argument("--profile-top", type=int, default=12, help="profile part (eval models/methods/bits/batch): top ATen ops listed")
    ap.add_argument("--sweep-models", default="deit_tiny,swin_tiny")
    ap.add_argument("--sweep-methods", default="minmax,percentile,repq")
    ap.add_argument("--sweep-bits", default="w4a4,w8a8")
    ap.add_argument("--sweep-eval-limit", type=int, default=200)
    ap.add_argument("--sweep-calib", type=int, default=32)
    ap.add_argument("--recon-models", default="deit_small,vit_base")
    ap.add_argument("--recon-methods", default=None, help="default: every method with a block reconstruction")
    ap.add_argument("--recon-batch", type=_ints, default=[8, 32], help="batch sizes, e.g. 8,32")
    ap.add_argument("--recon-steps", type=int, default=10, help="reconstruction steps per unit (method.iters) in each cell")
    ap.add_argument("--recon-calib", type=int, default=32, help="random calibration images per recon cell")
    ap.add_argument("--decode-images", type=int, default=0, help="real evaluation images for the decode part (0: all)")
    ap.add_argument("--decode-synthetic", type=int, default=0, help="also read a random uint8 array of N 224x224 images")
    ap.add_argument("--decode-batch", type=int, default=100)
    ap.add_argument("--decode-workers", type=int, default=None, help="DataLoader workers (default: data.workers=auto)")
    ap.add_argument("--det-models", default="mask_rcnn_swin_t")
    ap.add_argument("--det-methods", default="repq")
    ap.add_argument("--det-bits", default="w4a4")
    ap.add_argument("--det-images", type=int, default=2, help="coco-tiny val2017 images, batch 1")
    ap.add_argument("--det-repeats", type=int, default=2, help="alternating FP/quantized forwards per image")
    ap.add_argument("--det-scale", type=_ints, default=[1333, 800], help="evaluation Resize scale (long,short)")
    ap.add_argument("--det-calib", type=int, default=1, help="train2017 calibration images")
    ap.add_argument("--det-calib-scale", type=_ints, default=[256, 160], help="calibration Resize scale")
    ap.add_argument("--det-top-ops", type=int, default=0, help="also profile one forward per side: top N ops")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        _cell_main(json.loads(args.cell))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = _csv(args.parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        ap.error(f"--parts {args.parts!r}: unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(PARTS)}")
    if "recon" in parts:
        _check_recon_args(ap, args)
    out = [f"# ptqbench benchmark ({args.device})", "", f"Machine: {machine()}", "",
           f"Command: `python -m ptqbench.bench {' '.join(sys.argv[1:])}`", ""]

    def emit(text: str) -> None:
        print(text, flush=True)
        out.append(text)

    for line in out:
        print(line)
    if "cost" in parts:
        emit(f"## Calibration cost ({args.cost_models}, {args.cost_bits}, {','.join(map(str, args.cost_calib))} images; "
             f"reconstructing methods with {args.recon_iters} iterations per unit and stage, batch 8)\n")
        rows = []
        for model in _csv(args.cost_models):
            for calib in args.cost_calib:
                for m in _csv(args.cost_methods):
                    rows.append(run_cell("cost", args.threads, model=model, method=m, bits=args.cost_bits,
                                         calib=calib, device=args.device, options=method_options(m, args.recon_iters)))
                    print(rows[-1], flush=True)
        emit(table(rows, ["model", "method", "bits", "calib", "quantize_s", "peak_rss_mb", "method_extra_mb",
                          "peak_cuda_mb", "weights", "images"]) + "\n")
    if "eval" in parts:
        emit(f"## Evaluation throughput, FP vs fake-quantized (batch {args.eval_batch}, best of "
             f"{args.eval_repeats} alternating forwards)\n")
        rows = []
        for model in args.eval_models.split(","):
            for m in args.eval_methods.split(","):
                rows.append(run_cell("eval_overhead", args.threads, model=model, method=m, bits=args.eval_bits,
                                     batch=args.eval_batch, repeats=args.eval_repeats, device=args.device,
                                     options=method_options(m, args.recon_iters), compile=args.eval_compile))
                print(rows[-1], flush=True)
        emit(table(rows, ["model", "method", "bits", "batch", "fp_img_s", "unfused_img_s", "q_img_s", "ratio",
                          "ratio_median", "fq_ratio", "cpu_ratio", "faults_per_forward", "weights"]
                   + (["compile_s", "compiled_equal", "compiled_max_abs_diff"] if args.eval_compile else [])
                   + (["branch_img_s", "fold_ratio", "fold_max_abs_diff", "fold_fp_max_abs_diff"] if any("fold_ratio" in r for r in rows) else [])) + "\n")
    if "profile" in parts:
        emit(f"## Where the fake-quantized forward spends its time (torch.profiler, {args.eval_bits}, batch "
             f"{args.eval_batch}, {args.eval_repeats} forwards): top ATen ops by self time, and the time inside "
             "each quantizer kind (fq:<kind>:<role>), as shares of the profiled wall time\n")
        for model in _csv(args.eval_models):
            for m in _csv(args.eval_methods):
                r = run_cell("eval_profile", args.threads, model=model, method=m, bits=args.eval_bits, batch=args.eval_batch,
                             repeats=args.eval_repeats, device=args.device, options=method_options(m, args.recon_iters),
                             top=args.profile_top)
                if "error" in r:
                    emit(f"### {model} {m}: failed: {r['error']}\n")
                    continue
                emit(f"### {model} {m} ({r['weights']} weights): {r['forward_ms']} ms per profiled forward\n")
                emit(table(r["top_ops"], ["op", "calls_per_fwd", "self_ms_per_fwd", "share"]) + "\n")
                emit(table(r["quantizers"], ["range", "calls_per_fwd", "ms_per_fwd", "share"]) + "\n")
    if "sweep" in parts:
        n = len(args.sweep_models.split(",")) * len(args.sweep_methods.split(",")) * len(args.sweep_bits.split(","))
        emit(f"## Sweep wall time: {n} jobs (model={args.sweep_models} method={args.sweep_methods} "
             f"bits={args.sweep_bits}, data.eval_limit={args.sweep_eval_limit}, calib.size={args.sweep_calib}, "
             "random weights)\n")
        rows = sweep_times(args.sweep_models, args.sweep_methods, args.sweep_bits, args.sweep_eval_limit,
                           args.sweep_calib, args.threads)
        emit(table(rows, ["phase", "jobs", "wall_s", "rc", "records_ok", "fp_cache_hits_in_records"]) + "\n")
    if "recon" in parts:
        from ptqbench.bench.recon_step import reconstructing_methods

        emit(f"## Reconstruction step time: seconds per transformer-block step (forward, the method's loss, backward, "
             f"Adam) of each stage of the method's recipe, its searches left out; {args.recon_steps} steps per unit on "
             f"{args.recon_calib} random images, random weights; median over the blocks (min-max beside it)\n")
        rows = []
        for model in _csv(args.recon_models):
            for m in _csv(args.recon_methods) if args.recon_methods else reconstructing_methods():
                for b in args.recon_batch:
                    got = run_cell("recon_step", args.threads, model=model, method=m, batch=b,
                                   iters=args.recon_steps, calib=args.recon_calib, device=args.device)
                    rows += got if isinstance(got, list) else [got]
                    print(got, flush=True)
        emit(table(rows, ["model", "method", "batch", "stage", "blocks", "iters", "s_per_block_step", "min_max",
                          "refreshes_per_block", "s_per_refresh"]) + "\n")
    if "decode" in parts:
        from ptqbench.launch import resolve_workers

        workers = resolve_workers("auto" if args.decode_workers is None else args.decode_workers)
        emit(f"## Evaluation data path: decode + resize + crop (JPEG files) vs the decoded uint8 array, images/s "
             f"(batch {args.decode_batch}, {workers} loader workers; synthetic: random 224x224 array read cold "
             "from disk, then warm)\n")
        row = run_cell("decode", args.threads, root=None, images=args.decode_images, batch=args.decode_batch,
                       workers=workers, synthetic=args.decode_synthetic)
        print(row, flush=True)
        emit(table([row], ["images", "workers", "decode_img_s", "build_s", "read_img_s", "speedup", "read_rss_growth_mb",
                           "synthetic_images", "synthetic_gib", "synthetic_cold_img_s", "synthetic_warm_img_s",
                           "synthetic_warm_rss_growth_mb"]) + "\n")
    if "job_eval" in parts:
        emit(f"## A job's evaluation (DeiT-T FP on the shared data, batch {args.job_eval_batch}): heap reused "
             "(`pipeline.evaluated`) vs fresh mappings for blocks past glibc's 32 MiB ceiling, each in its own process\n")
        rows = [run_cell("job_eval", args.threads, heap_mode=m, batch=args.job_eval_batch, limit=args.job_eval_limit)
                for m in ("mapped", "reused")]
        if all("error" not in r for r in rows):
            rows[1]["cpu_ratio"] = round(rows[1]["cpu_s"] / rows[0]["cpu_s"], 2)
            rows[1]["logits_equal"] = rows[0]["logits_sum"] == rows[1]["logits_sum"]
        print(rows, flush=True)
        emit(table(rows, ["heap", "batch", "images", "threads", "top1", "wall_s", "cpu_s", "sys_s", "minor_faults",
                          "peak_rss_mb", "cpu_ratio", "logits_equal"]) + "\n")
    if "det_eval" in parts:
        from ptqbench.bench.det_eval import det_eval_part

        det_eval_part(args, emit, run_cell, table, method_options)
    dest = Path(args.out) if args.out else REPO_ROOT / "results" / "benchmarks" / f"bench_{platform.node()}_{args.device}.md"
    write_text_atomic(dest, "\n".join(out) + "\n")
    print(f"written to {dest}")


if __name__ == "__main__":
    main()
