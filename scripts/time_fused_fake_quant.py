"""Whether one fused pass of uniform fake quantization would speed up a quantized evaluation.

`uniform.fake_quant` runs four in-place passes (div, round, clamp, mul). This script builds the
same arithmetic as one torch.compile'd (Inductor) pointwise kernel, checks it gives the eager
result bit for bit, and times it against the eager passes, first alone on DeiT-T-sized
activations and then inside a quantized DeiT-T (the eager function swapped for the fused one in
the same process), in CPU time, alternating, under the heap a job evaluates with
(`heap.every_block_reused`). Nothing in ptqbench uses the fused kernel; this is the measurement
that decided so (docs/benchmarks.md, "A fused uniform kernel").

    python scripts/time_fused_fake_quant.py [METHOD] [REPEATS]     # default minmax 9
"""

from __future__ import annotations

import copy
import sys
import time

import torch

import ptqbench.quant.uniform as uniform
from ptqbench.bench.cells import _quantized, calibration_images, load_model
from ptqbench.heap import every_block_reused
from ptqbench.quant.calibration import quant_disabled


def _fused(x: torch.Tensor, s: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(torch.round(x / s), lo), hi) * s


def main() -> None:
    method = sys.argv[1] if len(sys.argv) > 1 else "minmax"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    torch.set_num_threads(1)
    kernel = torch.compile(_fused, dynamic=True)
    eager = uniform.fake_quant

    def fused(x, scale, zero_point, qmin, qmax, integral_zero_point=True, overwrite=False):
        if torch.is_grad_enabled() or not integral_zero_point:
            return eager(x, scale, zero_point, qmin, qmax, integral_zero_point, overwrite)
        return kernel(x, scale, qmin - zero_point, qmax - zero_point)

    def best_cpu_ms(fn, n: int = 15) -> float:
        best = float("inf")
        for _ in range(n):
            t = time.process_time()
            fn()
            best = min(best, time.process_time() - t)
        return round(best * 1e3, 2)

    g = torch.Generator().manual_seed(0)
    s, z = torch.tensor(0.0731), torch.tensor(0.0)
    print("| activation | eager ms | fused ms | equal (incl. exact ties) |\n|---|---|---|---|")
    with torch.no_grad(), every_block_reused():
        for shape in [(32, 197, 192), (32, 197, 768), (32, 3, 197, 197)]:
            x = torch.randn(shape, generator=g) * 3
            ties = (torch.randint(-40, 40, shape, generator=g).float() + 0.5) * s
            equal = all(torch.equal(eager(v, s, z, -8, 7), fused(v, s, z, -8, 7)) for v in (x, ties))
            print(f"| {list(shape)} | {best_cpu_ms(lambda: eager(x, s, z, -8, 7))} | "
                  f"{best_cpu_ms(lambda: fused(x, s, z, -8, 7))} | {equal} |")

    net, _ = load_model("deit_tiny")
    fp = copy.deepcopy(net).eval()
    calib, _ = calibration_images(net, 32)
    q = _quantized(net, method, "w4a4", calib, {"iters": 5} if method in ("qdrop", "brecq") else {})[0].model.eval()
    x = torch.randn(32, 3, 224, 224, generator=g)
    times: dict[str, list[float]] = {"fp": [], "eager": [], "fused": [], "quantizers off": []}
    with torch.no_grad(), every_block_reused():
        ref = q(x)
        uniform.fake_quant = fused
        try:
            equal = torch.equal(ref, q(x))
            for _ in range(repeats):
                for side, out in times.items():
                    uniform.fake_quant = fused if side == "fused" else eager
                    model = fp if side == "fp" else q
                    t = time.process_time()
                    if side == "quantizers off":
                        with quant_disabled(q):
                            model(x)
                    else:
                        model(x)
                    out.append(time.process_time() - t)
        finally:
            uniform.fake_quant = eager
    best = {k: min(v) for k, v in times.items()}
    print(f"\nDeiT-T {method} W4A4, batch 32, 1 thread, best of {repeats} in CPU time; logits fused == eager: {equal}")
    print("| side | CPU ms | / FP |\n|---|---|---|")
    for side, t in best.items():
        print(f"| {side} | {t * 1e3:.0f} | {t / best['fp']:.3f} |")


if __name__ == "__main__":
    main()
