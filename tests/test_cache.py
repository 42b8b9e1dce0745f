"""The content-addressed cache: computes once, detects corruption, stays bounded, is safe across
processes, and the reconstruction engine's FP targets give the same result from the cache."""

import logging
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import make_tiny_vit

from ptqbench.cache import ActivationStore, ContentCache, module_state_key
from ptqbench.hashing import content_key
from ptqbench.methods import Bits, build_method
from ptqbench.models.adapter import make_quantizable
from ptqbench.algorithms.reconstruction import ReconConfig, reconstruct


class Counter:
    def __init__(self, value):
        self.calls, self.value = 0, value

    def __call__(self):
        self.calls += 1
        return self.value


def test_computes_once_then_hits_and_a_new_key_misses(tmp_path):
    cache = ContentCache(tmp_path)
    make = Counter({"x": torch.arange(5.0)})
    a = cache.get_or_compute("calib", content_key("a", 1), make)
    b = cache.get_or_compute("calib", content_key("a", 1), make)
    assert make.calls == 1 and torch.equal(a["x"], b["x"])
    cache.get_or_compute("calib", content_key("a", 2), make)
    assert make.calls == 2 and (cache.stats.hits, cache.stats.misses) == (1, 2)
    j = Counter({"top1": 81.5})
    assert cache.get_or_compute("fp_eval", "k", j, fmt="json") == cache.get_or_compute("fp_eval", "k", j, fmt="json")
    assert j.calls == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_payload"])
def test_corrupted_entry_is_reported_deleted_and_recomputed(tmp_path, caplog, damage):
    cache = ContentCache(tmp_path)
    make = Counter({"x": torch.randn(100)})
    cache.get_or_compute("calib", "k", make)
    data = tmp_path / "calib" / "k.pt"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:50])
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[-10] ^= 0xFF
        data.write_bytes(bytes(raw))
    else:
        data.unlink()
    with caplog.at_level(logging.WARNING, logger="ptqbench"):
        again = cache.get_or_compute("calib", "k", make)
    assert make.calls == 2 and cache.stats.corrupt == 1
    assert torch.equal(again["x"], make.value["x"])
    assert "corrupted" in caplog.text and str(data) in caplog.text
    assert cache.get_or_compute("calib", "k", make) is not None and make.calls == 2  # healthy again


def test_bounded_size_evicts_least_recently_used(tmp_path):
    blob = {"x": torch.zeros(25_000)}  # ~100 kB each
    cache = ContentCache(tmp_path, max_bytes=350_000)
    for k in "abc":
        cache.get_or_compute("t", k, lambda: blob)
        time.sleep(0.02)
    cache.get_or_compute("t", "a", lambda: pytest.fail("a should be a hit"))  # refresh a: b is now the oldest
    time.sleep(0.02)
    cache.get_or_compute("t", "d", lambda: blob)
    left = sorted(p.stem for p in (tmp_path / "t").glob("*.pt"))
    assert left == ["a", "c", "d"] and cache.stats.evicted == 1
    assert cache.size_bytes() <= 350_000


def test_disabled_cache_computes_every_time_and_writes_nothing(tmp_path):
    cache = ContentCache(tmp_path / "c", enabled=False)
    make = Counter({"x": torch.ones(2)})
    cache.get_or_compute("t", "k", make)
    cache.get_or_compute("t", "k", make)
    assert make.calls == 2 and not (tmp_path / "c").exists()


def _slow_compute(root: str, marker: str) -> None:
    def compute():
        with open(marker, "a") as f:
            f.write("computed\n")
        time.sleep(1.0)
        return {"x": torch.arange(3.0)}

    out = ContentCache(Path(root)).get_or_compute("t", "shared", compute)
    assert torch.equal(out["x"], torch.arange(3.0))


def test_concurrent_jobs_compute_an_entry_once(tmp_path):
    marker = tmp_path / "calls.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_slow_compute, args=(str(tmp_path / "cache"), str(marker))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert marker.read_text().count("computed") == 1


def _reconstructed(store):
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    meth = build_method({"name": "dopq", "reconstruct": False}, Bits(4, 4))
    qm = make_quantizable(make_tiny_vit(), meth.plan())
    meth.quantize(qm, images)
    cfg = ReconConfig(iters=5, batch_size=4, learn=("act_scale", "weight_rounding"), progress=False)
    reconstruct(qm.model, qm.units, images, cfg, fp_targets=store)
    with torch.no_grad():
        return qm.model(images), module_state_key(qm.model)


def test_reconstruction_targets_from_the_cache_give_the_same_model(tmp_path):
    plain, _ = _reconstructed(None)
    cache = ContentCache(tmp_path)
    cold, _ = _reconstructed(ActivationStore(cache, "calib-key"))
    misses = cache.stats.misses
    warm, _ = _reconstructed(ActivationStore(cache, "calib-key"))
    assert misses >= 4 and cache.stats.misses == misses and cache.stats.hits == misses  # every unit's target hit
    assert torch.equal(plain, cold) and torch.equal(plain, warm)


def test_replacing_an_image_changes_the_data_signature(tiny_imagenet, tmp_path):
    import shutil

    from ptqbench.data import ImageNetFolder, files_signature

    root = tmp_path / "copy"
    shutil.copytree(tiny_imagenet, root)
    ds = ImageNetFolder(root, "train")
    before = files_signature(ds, [0, 1])
    assert files_signature(ImageNetFolder(root, "train"), [0, 1]) == before  # stable
    path = Path(ds.samples[1][0])
    path.write_bytes(path.read_bytes() + b"\0")  # same name, new content
    assert files_signature(ImageNetFolder(root, "train"), [0, 1]) != before
    assert files_signature(ImageNetFolder(root, "train"), [0]) == files_signature(ds, [0])
