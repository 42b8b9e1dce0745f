"""Peak RSS of the bench cost cell (the bench's method settings with `--recon-iters 30`), by the ptqbench function running: a thread samples the
process's RSS every 5 ms and tags each sample with the innermost ptqbench frame of the main
thread. Prints the cell's figures, then the 15 highest peaks by function, each with glibc's heap
at that moment (`mallinfo2`: MB in use and MB free inside the heap; where the free MB are large
the peak is fragmentation, not live tensors; blank on another C library).

Usage: python scripts/rss_by_function.py vit_base repq 128
"""
import collections
import ctypes
import os
import sys
import threading
import time

import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_mb() -> str:
    """glibc's heap in use and free, in MB ("" where mallinfo2 is missing)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return ""
    return f"heap in use {m.uordblks >> 20:5d}  free {m.fordblks >> 20:5d}"


def _innermost_ptqbench_frame(thread_id: int) -> str | None:
    f = sys._current_frames().get(thread_id)
    while f is not None:
        name = f.f_code.co_filename
        if "/ptqbench/" in name:
            return f"{name.split('/ptqbench/')[-1]}:{f.f_code.co_name}"
        f = f.f_back
    return None


def main() -> None:
    model, method, calib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    from ptqbench.bench import cells

    main_id, peaks, done = threading.get_ident(), collections.defaultdict(float), threading.Event()
    heap: dict[str | None, str] = {}

    def sample() -> None:
        while not done.is_set():
            rss, tag = _rss_mb(), _innermost_ptqbench_frame(main_id)
            if rss > peaks[tag]:
                peaks[tag] = rss
                heap[tag] = _heap_mb()
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    from ptqbench.bench.__main__ import method_options

    print(cells.cost(model, method, "w4a4", calib, "cpu", method_options(method, 30)))
    done.set()
    sampler.join()
    for tag, mb in sorted(peaks.items(), key=lambda kv: -kv[1])[:15]:
        print(f"{mb:8.0f}  {heap.get(tag, '')}  {tag}")


if __name__ == "__main__":
    from ptqbench.heap import rerun_without_tcache

    rerun_without_tcache()  # memory as a job measures it (glibc's per-thread cache off)
    main()
