"""The quantization phase returns large freed blocks to the OS (glibc's mmap threshold)."""

import os
import platform
import subprocess
import sys

import pytest

from ptqbench import heap


_BLOCKS_FREED = """
import psutil, torch
from ptqbench import heap
rss = lambda: psutil.Process().memory_info().rss / 2**20
with heap.{block}():
    start = rss()
    blocks = [torch.ones(2 << 20) for _ in range(40)]  # 40 x 8 MB, under glibc's 32 MB dynamic maximum
    grown = rss() - start
    kept = blocks[len(blocks) - {kept}:]  # kept at the heap top, they pin the space below them
    del blocks
    held = rss() - start
    {then}
    left = rss() - start
print(round(grown), round(held), round(left))
"""


def _freed_in_a_fresh_process(block: str, kept: int = 0, then: str = "pass") -> tuple[int, int, int]:
    """RSS MB above the start with 40 blocks of 8 MB allocated, after they are freed (but `kept`),
    and after `then`.
    A fresh process: in a long-lived one, earlier frees leave large chunks in malloc's bins, which
    serve new blocks before the mmap threshold is consulted."""
    code = _BLOCKS_FREED.format(block=block, kept=kept, then=then)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown, held, left = (int(v) for v in out.stdout.split())
    return grown, held, left


@pytest.mark.skipif(platform.system() != "Linux" or heap._glibc() is None, reason="glibc only")
def test_large_blocks_freed_inside_the_block_leave_the_resident_set():
    grown, held, _ = _freed_in_a_fresh_process("large_blocks_unmapped")
    assert grown > 250 and held < 50, (grown, held)


@pytest.mark.skipif(platform.system() != "Linux" or heap._glibc() is None, reason="glibc only")
def test_free_heap_under_a_live_block_goes_back_to_the_os():
    grown, held, left = _freed_in_a_fresh_process("large_blocks_reused", kept=1, then="heap.free_heap_returned()")
    assert grown > 250 and held > 250 and left < 50, (grown, held, left)


_REUSE_AFTER_QUANTIZATION = """
import resource, torch
from ptqbench import heap
with heap.large_blocks_unmapped():
    pass
for _ in range(10):  # 8 MB blocks, below the 32 MiB threshold fixed on the way out: from the heap
    torch.ones(2 << 20)  # (the first few may fault while the heap settles)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(2 << 20)  # allocated, written, freed at the top of the heap
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or heap._glibc() is None, reason="glibc only")
def test_after_quantization_freed_heap_blocks_are_reused_not_faulted_back():
    # fixing the mmap threshold freezes glibc's trim threshold at 128 KiB unless it is set too:
    # each 8 MB block would then go back to the OS and fault in again (2048 pages each time)
    out = subprocess.run([sys.executable, "-c", _REUSE_AFTER_QUANTIZATION], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 2000, out.stdout


def test_without_glibc_the_threshold_is_left_alone(monkeypatch):
    heap._glibc.cache_clear()
    monkeypatch.setattr(heap.ctypes.util, "find_library", lambda name: None)
    try:
        assert heap.set_mmap_threshold(1 << 20) is False
        with heap.large_blocks_unmapped():
            pass
    finally:
        monkeypatch.undo()
        heap._glibc.cache_clear()


def test_reused_blocks_inside_an_unmapped_block_restore_the_unmapped_threshold(monkeypatch):
    # the compute loops (reconstruction, grid search) lift the 1 MiB threshold for their duration only
    calls: list[int] = []
    monkeypatch.setattr(heap, "set_mmap_threshold", lambda n: calls.append(n) or True)
    with heap.large_blocks_unmapped():
        with heap.large_blocks_reused():
            assert heap._threshold == heap.GLIBC_DYNAMIC_MAX
        assert heap._threshold == heap.QUANTIZE_MMAP_THRESHOLD
    assert heap._threshold == heap.GLIBC_DYNAMIC_MAX
    assert calls == [heap.QUANTIZE_MMAP_THRESHOLD, heap.GLIBC_DYNAMIC_MAX, heap.QUANTIZE_MMAP_THRESHOLD,
                     heap.GLIBC_DYNAMIC_MAX]


def test_a_one_off_pass_inside_reused_blocks_gets_the_unmapped_threshold_then_the_reuse_limit_back(monkeypatch):
    # FIMA-Q's Fisher refresh and APHQ-ViT's Hessian inside a training loop at a user's heap_reuse_mib
    calls: list[int] = []
    monkeypatch.setattr(heap, "set_mmap_threshold", lambda n: calls.append(n) or True)
    monkeypatch.setattr(heap, "_reuse_limit", 4 << 20)
    with heap.large_blocks_unmapped():
        with heap.large_blocks_reused():
            with heap.large_blocks_unmapped_once():
                assert heap._threshold == heap.QUANTIZE_MMAP_THRESHOLD
            assert heap._threshold == 4 << 20
    assert calls == [heap.QUANTIZE_MMAP_THRESHOLD, 4 << 20, heap.QUANTIZE_MMAP_THRESHOLD, 4 << 20,
                     heap.QUANTIZE_MMAP_THRESHOLD, heap.GLIBC_DYNAMIC_MAX]


def test_the_reuse_limit_is_what_reused_blocks_set(monkeypatch):
    # heap_reuse_mib: the memory-for-time setting of the training and search loops
    calls: list[int] = []
    monkeypatch.setattr(heap, "set_mmap_threshold", lambda n: calls.append(n) or True)
    monkeypatch.setattr(heap, "_reuse_limit", heap._reuse_limit)
    heap.set_reuse_limit(2)
    with heap.large_blocks_unmapped():
        with heap.large_blocks_reused():
            assert heap._threshold == 2 << 20
        assert heap._threshold == heap.QUANTIZE_MMAP_THRESHOLD
    assert calls[1] == 2 << 20
    for bad in (0, 33, 1.5):
        with pytest.raises(ValueError, match="give an integer in 1..32"):
            heap.set_reuse_limit(bad)


_EVALUATION_BLOCKS = """
import resource, torch
from ptqbench import heap
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def cycle(numel=15 << 20):  # 60 MB blocks, past glibc's 32 MiB ceiling: DeiT-T's MLP activations at batch 100
    before = faults()
    for _ in range(10):
        torch.ones(numel)
    return faults() - before
cycle()
mapped = cycle()
with heap.every_block_reused():
    cycle()
    reused = cycle()
# 80 MB afterwards: a 60 MB chunk the block freed mid-heap (below a live small allocation, so
# malloc_trim cannot return it) may still serve a 60 MB request, as glibc looks in its free lists
# before it maps; no free chunk can serve a larger one, so each is a mapping again
after = cycle(20 << 20)
print(mapped, reused, after)
"""


@pytest.mark.skipif(platform.system() != "Linux" or heap._glibc() is None, reason="glibc only")
def test_inside_an_evaluation_even_blocks_past_the_mmap_ceiling_are_reused():
    # each mapped 60 MB block is 14700 fresh pages; reused from the heap it faults none
    out = subprocess.run([sys.executable, "-c", _EVALUATION_BLOCKS], capture_output=True, text=True, check=True)
    mapped, reused, after = (int(v) for v in out.stdout.split())
    assert mapped > 100000 and reused < 2000 and after > 100000, out.stdout


def test_the_reuse_limit_changes_no_result(monkeypatch):
    """A reconstruction (AIQViT, tiny ViT, 3 steps a unit) with every block of 4 KiB or more mapped
    afresh (the tiny model's tensors stay below 1 MiB, so the limit is set below what
    heap_reuse_mib allows) against the default 32 MiB: the same quantized model to the bit."""
    import copy

    from ptqbench.methods import Bits, build_method
    from ptqbench.pipeline import quantize
    from tests.conftest import make_tiny_vit

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    monkeypatch.setattr(heap, "_reuse_limit", heap._reuse_limit)
    model = make_tiny_vit()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outs, set_to, real_set = [], [], heap.set_mmap_threshold
    monkeypatch.setattr(heap, "set_mmap_threshold", lambda n: set_to.append(n) or real_set(n))
    for limit in (4 << 10, 32 << 20):
        monkeypatch.setattr(heap, "_reuse_limit", limit)
        method = build_method({"name": "aiq", "iters": 3, "batch_size": 4, "progress": False}, Bits(4, 4))
        qm, _, _ = quantize(method, copy.deepcopy(model), x, torch.device("cpu"))
        with torch.no_grad():
            outs.append(qm.model(x))
    assert set_to.count(4 << 10) >= 1  # the reconstruction ran under the limit
    assert torch.equal(outs[0], outs[1])


def test_tcache_tunable_is_added_kept_or_left_to_the_user():
    assert heap.env_without_tcache({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": heap.TCACHE_OFF}
    assert heap.env_without_tcache({"GLIBC_TUNABLES": "glibc.malloc.mxfast=0"})["GLIBC_TUNABLES"] == \
        "glibc.malloc.mxfast=0:" + heap.TCACHE_OFF
    assert heap.env_without_tcache({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=3"}) is None  # the user's choice
    assert heap.env_without_tcache({heap.KEEP_TCACHE_ENV: "keep"}) is None


_RERUN = """
import os
from ptqbench import heap
heap.rerun_without_tcache()
print(os.getpid(), os.environ.get("GLIBC_TUNABLES"))
"""


@pytest.mark.skipif(platform.system() != "Linux" or heap._glibc() is None, reason="glibc only")
@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep"])
def test_entry_point_reruns_itself_once_with_the_cache_off(keep):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", heap.KEEP_TCACHE_ENV)}
    if keep:
        env[heap.KEEP_TCACHE_ENV] = "keep"
    proc = subprocess.Popen([sys.executable, "-c", _RERUN], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    pid, tunables = out.split()  # one line: the command ran to its end once, in the same process
    assert int(pid) == proc.pid
    assert tunables == ("None" if keep else heap.TCACHE_OFF)
