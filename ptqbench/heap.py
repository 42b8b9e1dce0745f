"""Keep the process's resident memory close to its live tensors during quantization.

glibc's malloc serves requests below its mmap threshold from heap arenas and keeps freed heap
memory for reuse instead of returning it to the OS. The threshold starts at 128 KiB and rises
to the size of each freed mmapped block (up to 32 MiB), so after the first large tensors are
freed, every activation-sized tensor (a few MB to 32 MB) comes from the heap, and the mixed sizes
of a calibration's forward passes and range searches fragment it: RSS then grows far past what is
alive. Measured on DeiT-T, RepQ-ViT, 32 images (the per-quantizer fits of the streamed
calibration): an MSE range search over 4.8 M values held 60 MB of tensors at once but raised RSS
by 241 MB and kept it; with a fixed 1 MiB threshold, +57 MB, returned when freed; the whole
calibration peaked 1288 MB instead of 885 MB.

Fixing the mmap threshold with `mallopt` also freezes glibc's trim threshold (dynamically
2x the mmap threshold) at its 128 KiB start unless it is set as well, so every function here
sets it to 2x: otherwise each large free at the top of the heap goes back to the OS and the next
allocation faults it in again (`set_mmap_threshold` has the measurement: 14 % of a quantized
forward's CPU time).

`large_blocks_unmapped` fixes the threshold for a block of work, so blocks of 1 MiB or more are
mapped and unmapped per allocation, and sets it to glibc's dynamic maximum (32 MiB) afterwards,
the value the dynamic threshold reaches anyway once large tensors have been freed (evaluation
keeps reusing heap blocks below it). It changes no result, only where memory comes from. On a C
library without `mallopt` (not glibc: macOS, musl) it does nothing; PyTorch's CUDA memory is not
affected either way.

The price is speed where a loop allocates the same large tensors again and again: each mapping is
fresh pages that the kernel zeroes on first touch. Measured on DeiT-T W4A4, 32 images, 1 thread
(`/usr/bin/time`-style user/sys split): the qdrop grid search of the first two units took 233 s
(104 s of it system time) at 1 MiB against 106 s (0.6 s) at 32 MiB; 40 reconstruction steps of
three units 30.0 s against 16.8 s, for 84 MB more peak RSS. Those loops (block reconstruction, the
grid search) run inside `large_blocks_reused`, which puts the threshold back to 32 MiB for their
duration: their tensors repeat in size, so the heap reuses its blocks instead of fragmenting.

glibc's per-thread cache (tcache: up to 7 freed chunks of each size up to 1 KiB) defeats that
reuse: the chunks it holds stay marked as in use, so they never merge with the free space around
them; where one sits inside a large tensor's freed hole, the next large tensor does not fit there
and extends the heap (measured in `env_without_tcache`). The entry points therefore re-run
themselves with the cache off (`rerun_without_tcache`, GLIBC_TUNABLES; glibc reads it only at
process start); `PTQBENCH_GLIBC_TCACHE=keep` opts out.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Iterator, Mapping, Optional

M_TRIM_THRESHOLD = -1          # glibc mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
GLIBC_MMAP_MAX_DEFAULT = 65536  # DEFAULT_MMAP_MAX
EVAL_TRIM_THRESHOLD = 1 << 30   # keep up to 1 GiB of freed heap while evaluating
QUANTIZE_MMAP_THRESHOLD = 1 << 20
GLIBC_DYNAMIC_MAX = 32 << 20   # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc


@functools.lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
    """The process's glibc, or None on another C library."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc only
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at `nbytes` and its trim threshold at twice that (glibc's own
    rule while it adjusts them dynamically); False where the C library is not glibc or refused.

    Fixing the mmap threshold stops glibc's dynamic adjustment of both, which leaves the trim
    threshold at its 128 KiB start: every free at the top of the heap then returns the pages to
    the OS and the next allocation faults them back in, zeroed. Measured on DeiT-T W4A4 minmax,
    batch 16, 1 thread, after quantization: 48760 minor faults and 114 ms system time per
    quantized forward (13447 and 28 ms for FP), none with the trim threshold at 2x."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)) == 1
                and libc.mallopt(M_TRIM_THRESHOLD, 2 * int(nbytes)) == 1)


_threshold = GLIBC_DYNAMIC_MAX  # the value this module last set (glibc cannot be asked)
_reuse_limit = GLIBC_DYNAMIC_MAX  # what large_blocks_reused sets (set_reuse_limit; the run's heap_reuse_mib)


def set_reuse_limit(mib: int) -> None:
    """The mmap threshold that `large_blocks_reused` sets, in MiB (1..32; 32 by default): blocks
    below it are kept and reused while a method trains or searches. Lower trades time for memory.
    Measured on AIQViT's DeiT-T reconstruction (docs/benchmarks.md): 32 MiB peaked at 1057-1077
    MB, 2 MiB at 1000 MB for 1.49x the reconstruction time, 1 MiB at 914 MB for 1.87x."""
    global _reuse_limit
    if not (isinstance(mib, int) and 1 <= mib <= GLIBC_DYNAMIC_MAX >> 20):
        raise ValueError(f"heap reuse limit {mib!r} MiB: give an integer in 1..{GLIBC_DYNAMIC_MAX >> 20}")
    _reuse_limit = mib << 20


@contextlib.contextmanager
def _threshold_set(nbytes: int, after: int) -> Iterator[None]:
    global _threshold
    before = _threshold
    set_mmap_threshold(nbytes)
    _threshold = nbytes
    try:
        yield
    finally:
        set_mmap_threshold(after if after else before)
        _threshold = after if after else before


@contextlib.contextmanager
def large_blocks_unmapped(threshold: int = QUANTIZE_MMAP_THRESHOLD) -> Iterator[None]:
    """Inside the block, allocations of `threshold` bytes or more are returned to the OS when
    freed (see the module docstring); afterwards the threshold is glibc's dynamic maximum."""
    with _threshold_set(threshold, after=GLIBC_DYNAMIC_MAX):
        yield


@contextlib.contextmanager
def large_blocks_unmapped_once(threshold: int = QUANTIZE_MMAP_THRESHOLD) -> Iterator[None]:
    """`large_blocks_unmapped` for one pass inside a loop that reuses its blocks: afterwards the
    threshold is what it was before. For a pass over far more images than the loop's steps (FIMA-Q's
    Fisher refresh and APHQ-ViT's perturbation Hessian: 32 images, before steps of 8), whose large
    tensors would otherwise grow the heap that the steps then keep touching."""
    with _threshold_set(threshold, after=0):
        yield


@contextlib.contextmanager
def large_blocks_reused() -> Iterator[None]:
    """Inside the block, the threshold is the reuse limit (by default glibc's dynamic maximum:
    heap blocks up to 32 MiB are kept and reused, the fast setting for loops that repeat their
    allocations; `set_reuse_limit`); afterwards it is what it was before."""
    with _threshold_set(_reuse_limit, after=0):
        yield


@contextlib.contextmanager
def every_block_reused() -> Iterator[None]:
    """Inside the block no allocation gets a mapping of its own: tensors past glibc's 32 MiB
    ceiling (which no threshold can raise) come from the heap too, and freed heap stays for reuse.
    Afterwards mapping is back on, the threshold is the one set before, and the free heap goes
    back to the OS (`malloc_trim`). For evaluation, which allocates the same activations batch
    after batch: at the default eval batch of 100, DeiT-T's MLP hidden activations are 60 MB, so
    each was a fresh mapping whose pages the kernel zeroed on first touch. Measured (a one-off
    script; `python -m ptqbench.bench --parts job_eval` measures a whole evaluation) on the FP
    forward of one batch of 100 shared-data images, 1 thread: 444072 minor faults and 0.81 s
    system time per forward with mapping on, 7369 and 0.01 s inside this block (user time
    3.26 s and 3.16 s): 22 % less CPU time. Results are unchanged (only where memory comes from).
    Does nothing on a C library other than glibc."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, EVAL_TRIM_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX_DEFAULT)
        set_mmap_threshold(_threshold)
        libc.malloc_trim(0)


def free_heap_returned() -> None:
    """Give the heap's free pages back to the OS (`malloc_trim(0)`), wherever they lie in it.

    For loops that keep the heap's blocks for speed (`large_blocks_reused`) and then move on to
    work of other sizes: block reconstruction, unit after unit, left each unit's freed blocks
    resident under the next unit's longer-lived tensors (AIQViT on DeiT-T: RSS +250 MB over the
    units for +32 MB of live tensors; `scripts/live_tensors_per_unit.py`). The next allocations
    fault fresh pages in. Does nothing on a C library other than glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


TCACHE_OFF = "glibc.malloc.tcache_count=0"
KEEP_TCACHE_ENV = "PTQBENCH_GLIBC_TCACHE"  # "keep": run with glibc's per-thread cache as it is


def env_without_tcache(env: Mapping[str, str]) -> Optional[dict[str, str]]:
    """`env` with glibc's per-thread cache turned off through GLIBC_TUNABLES, or None where nothing
    should change: the tunable is already set (by the user or by an earlier re-run), or
    PTQBENCH_GLIBC_TCACHE=keep asks for glibc's default.

    Why: the cache keeps up to 7 freed chunks of each small size (up to 1 KiB) marked as in use,
    so they never merge with the free space around them, and large tensors stop fitting in the
    holes they sit in (the module docstring). Measured on FIMA-Q's grid search of DeiT-T's first
    three units (32 images, 1 thread, docs/benchmarks.md): peak RSS 915 and 996 MB with the cache,
    794 without it (787 with the fastbins off too); the fastbins alone off (`mxfast=0`): 1039. The
    cache can only be set before the process starts (glibc reads its tunables once)."""
    if env.get(KEEP_TCACHE_ENV) == "keep":
        return None
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.tcache_count" in tunables:
        return None
    return {**env, "GLIBC_TUNABLES": f"{tunables}:{TCACHE_OFF}" if tunables else TCACHE_OFF}


def rerun_without_tcache() -> None:
    """Replace this process by the same command with glibc's per-thread cache off
    (`env_without_tcache`); for the entry points (`python -m ptqbench`, `python -m ptqbench.bench`),
    first thing, so every job, sweep worker and bench cell started from them inherits it. Does
    nothing on a C library other than glibc, or where the environment says not to."""
    if _glibc() is None:
        return
    env = env_without_tcache(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
