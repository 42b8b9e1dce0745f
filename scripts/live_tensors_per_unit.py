"""After every reconstructed unit (each `finish_unit`), the process's RSS and the bytes of every
live tensor `gc` finds (storages counted once): tells memory that ptqbench holds from freed heap
the allocator keeps. Runs the bench cost cell of DeiT-T, 32 images, W4A4, 30 steps per unit,
batch 8, 1 thread.

Usage: python scripts/live_tensors_per_unit.py dopq
"""
import gc
import os
import sys

import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _live_tensor_mb() -> tuple[float, int]:
    seen, total = set(), 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta:
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total / 2**20, len(seen)


def main() -> None:
    torch.set_num_threads(1)
    from ptqbench.algorithms import reconstruction
    from ptqbench.bench import cells

    finish = reconstruction.finish_unit

    def finish_and_report(state):
        out = finish(state)
        gc.collect()
        mb, n = _live_tensor_mb()
        print(f"unit done: rss {_rss_mb():.0f} MB, live tensors {mb:.1f} MB in {n}", flush=True)
        return out

    reconstruction.finish_unit = finish_and_report
    print(cells.cost("deit_tiny", sys.argv[1], "w4a4", 32, "cpu", {"iters": 30, "batch_size": 8}))


if __name__ == "__main__":
    main()
