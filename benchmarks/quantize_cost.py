"""Quantization wall time and peak memory per method, model and calibration size.

    python benchmarks/quantize_cost.py                       # the default grid, one table
    python benchmarks/quantize_cost.py --models deit_tiny --methods erq --calib 32

Each cell runs in its own process, so peaks do not leak between cells. Reported per cell: the
seconds spent in `method.quantize` (calibration + the method's own work, no evaluation), the
process's peak RSS during it, and that peak minus the RSS just before it (what the method itself
needs on top of the model and the calibration images). Weights: the model's local weights if
found (PTQBENCH_DATA/weights), else random (timing and memory do not depend on them).
Calibration images: real imagenet-mini train images when the shared data is present, else
random tensors. Not a test: run on request and keep the output in results/benchmarks/. The whole suite (this
cost, evaluation overhead, sweep cold/warm) is `python -m ptqbench.bench`.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch


def one(model_name: str, method_name: str, calib_size: int, bits: str, threads: int | None) -> dict:
    """One cell (ptqbench.bench.cells.cost, the suite's own measurement), in this table's columns."""
    from ptqbench.bench.cells import cost

    if threads:
        torch.set_num_threads(threads)
    r = cost(model_name, method_name, bits, calib_size, "cpu", {})
    return {**r, "seconds": r["quantize_s"], "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="deit_tiny,vit_base")
    ap.add_argument("--methods", default="repq,gptq,erq")
    ap.add_argument("--calib", default="32,128")
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single:
        print(json.dumps(one(args.models, args.methods, int(args.calib), args.bits, args.threads)))
        return
    print(f"# quantization cost, {args.bits}; {platform.node()} {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| model | method | calib images | quantize s | peak RSS MB | method extra MB | weights | images |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for calib in args.calib.split(","):
            for method in args.methods.split(","):
                cmd = [sys.executable, __file__, "--single", "--models", model, "--methods", method,
                       "--calib", calib, "--bits", args.bits]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"| {model} | {method} | {calib} | failed: {out.stderr.strip().splitlines()[-1]} | | | | |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {r['model']} | {r['method']} | {r['calib']} | {r['seconds']} | {r['peak_rss_mb']} | "
                      f"{r['method_extra_mb']} | {r['weights']} | {r['images']} |", flush=True)


if __name__ == "__main__":
    main()
