"""Evaluation overhead of fake quantization: forward time of the quantized model / FP model,
same batch, same process (the machine is noisy: compare as a ratio, best of N).

    python benchmarks/eval_overhead.py --model deit_tiny --method repq --bits w4a4 --batch 100

Random weights are used unless the model's weights are found locally (speed does not depend on
them). Not a test: run on request, copy the output into docs/results.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

from ptqbench.methods import Bits, build_method
from ptqbench.models import create_model, make_quantizable, model_entry


def best_time(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(x)  # warm-up (and weight fake-quant cache fill)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_tiny")
    ap.add_argument("--method", default="repq")
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    w, a = (int(v) for v in args.bits[1:].split("a"))
    entry = model_entry(args.model)
    try:
        model, info = create_model(entry, allow_download=False)
    except Exception:
        model, info = create_model(entry, pretrained=False)
    fp = copy.deepcopy(model)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224)
    method = build_method({"name": args.method}, Bits(w, a))
    qm = make_quantizable(model, method.plan())
    t0 = time.perf_counter()
    method.quantize(qm, x[:32])
    calib_s = time.perf_counter() - t0
    t_fp = best_time(fp, x, args.repeats)
    t_q = best_time(qm.model, x, args.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.model} ({info['source']}) {args.method} {args.bits} batch {args.batch}: "
          f"FP {t_fp:.2f} s, quantized {t_q:.2f} s, ratio {t_q / t_fp:.2f} (calibration on 32 images {calib_s:.1f} s)")


if __name__ == "__main__":
    main()
