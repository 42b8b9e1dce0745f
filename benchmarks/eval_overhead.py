"""Evaluation overhead of fake quantization: forward time of the quantized model / FP model,
same batch, same process (the machine is noisy: compare as a ratio, best of N).

    python benchmarks/eval_overhead.py --model deit_tiny --method repq --bits w4a4 --batch 100

Random weights are used unless the model's weights are found locally (speed does not depend on
them). Not a test: run on request. Same measurement as `python -m ptqbench.bench --parts eval`
(FP and quantized forwards alternate; best of N).
"""

from __future__ import annotations

import argparse
import platform

import torch

from ptqbench.bench.cells import eval_overhead


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
    r = eval_overhead(args.model, args.method, args.bits, args.batch, args.repeats, "cpu")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.model} ({r['weights']}) {args.method} {args.bits} batch {args.batch}: FP {args.batch / r['fp_img_s']:.2f} s, "
          f"quantized {args.batch / r['q_img_s']:.2f} s, ratio {r['ratio']:.2f} (median {r['ratio_median']:.2f})")


if __name__ == "__main__":
    main()
