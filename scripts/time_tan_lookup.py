"""TanQ inference on one DeiT-T-sized attention map (32x3x197x197, 4 bits, 1 thread): the table
lookup of the dequantized codes against the arithmetic path, best of 15 calls each, in the order
given (L = lookup, A = arithmetic), with the evaluation heap (`ptqbench.heap.every_block_reused`,
as a job evaluates) unless --fresh-heap.

    python scripts/time_tan_lookup.py L A L A
    python scripts/time_tan_lookup.py --fresh-heap A L A L
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

import ptqbench.quant.tan as tan
from ptqbench.heap import every_block_reused


def best_ms(f, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("order", nargs="+", choices=["L", "A"])
    ap.add_argument("--fresh-heap", action="store_true", help="glibc's default heap instead of the evaluation's")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(32, 3, 197, 197), -1)
    theta, bits = tan.DEFAULT_THETAS[len(tan.DEFAULT_THETAS) // 2], 4
    table = tan._dequant_table
    if table(theta, bits, attn.dtype, attn.device) is None:
        raise SystemExit("no table on this CPU (its SIMD and scalar arctangents differ): only the arithmetic path runs")
    heap = contextlib.nullcontext() if args.fresh_heap else every_block_reused()
    with torch.no_grad(), heap:
        for side in args.order:
            tan._dequant_table = table if side == "L" else (lambda *a, **k: None)
            print(f"{'lookup' if side == 'L' else 'arithmetic'}: {best_ms(lambda: tan.tan_fake_quant(attn, theta, bits)):.1f} ms")
    tan._dequant_table = table


if __name__ == "__main__":
    main()
