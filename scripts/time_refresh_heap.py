"""Seconds and minor page faults of one FIMA-Q Fisher refresh (`fisher_rows` on DeiT-T's block 1,
32 random images, random weights, 1 thread) under the training loop's heap setting
(`large_blocks_reused`), with and without `large_blocks_unmapped_once`, alternated in one process.

Usage: python scripts/time_refresh_heap.py [ROUNDS=6]
"""
import contextlib
import resource
import sys
import time

import timm
import torch

from ptqbench import heap
from ptqbench.algorithms.fisher_dplr import fisher_rows, fp_references
from ptqbench.models.families import family_of


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    units = family_of(model).units(model)
    with torch.no_grad():
        h = units[0].forward(torch.randn(32, 3, 224, 224))
        y = units[1].forward(h)
    refs = fp_references(units[2:], y, 20.0, 32)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    faults: dict[bool, list[float]] = {True: [], False: []}
    with heap.large_blocks_unmapped(), heap.large_blocks_reused():
        for r in range(rounds):
            for unmapped in (False, True) if r % 2 == 0 else (True, False):
                ctx = heap.large_blocks_unmapped_once() if unmapped else contextlib.nullcontext()
                f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                with ctx:
                    fisher_rows(units[1], units[2:], h, y, 20.0, 32, refs)
                seconds[unmapped].append(time.perf_counter() - t0)
                faults[unmapped].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    for k in (False, True):
        print(f"unmapped_once={k}: best {min(seconds[k]):.3f} s, median {_median(seconds[k]):.3f} s, "
              f"minor faults median {_median(faults[k]):.0f}")
    print(f"unmapped / reused: best {min(seconds[True]) / min(seconds[False]):.2f}, "
          f"median {_median(seconds[True]) / _median(seconds[False]):.2f}")


if __name__ == "__main__":
    main()
