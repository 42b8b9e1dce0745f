"""Decode once (`ptqbench.data.decoded`): the cached evaluation pixels give the transform's images
bit for bit; one build per (files, transform), also under concurrent jobs; damaged entries are
rebuilt; transforms of another shape and caches too small fall back to decoding, saying why."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ptqbench.cache import ContentCache
from ptqbench.data import ImageNetFolder, eval_subset, files_signature, make_loader
from ptqbench.data.decoded import decoded_images, evaluation_loader, split_transform
from ptqbench.errors import DataNotFoundError

DEIT = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225), "crop_pct": 0.9}
SMALL = {**DEIT, "input_size": (3, 24, 24)}  # the tiny folder's 48x40 images, cropped to 24 px


def _timm_transform(crop_mode: str = "center", **over):
    import timm.data

    return timm.data.create_transform(**{**SMALL, "crop_mode": crop_mode, **over})


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x, y) for x, y in loader]


def _assert_same_batches(got, want) -> None:
    assert len(got) == len(want)
    for (x, y), (rx, ry) in zip(got, want):
        assert x.dtype == rx.dtype and x.is_contiguous() and torch.equal(x, rx), (x - rx).abs().max()
        assert torch.equal(y, ry)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_cached_pixels_then_float_conversion_equal_the_timm_transform(crop_mode):
    """Every timm eval crop mode splits at ToTensor, and uint8 pixels + `to_float` give exactly the
    transform's tensor (also batched), for odd sizes and aspect ratios."""
    from ptqbench.data.decoded import pixel_array

    transform = _timm_transform(crop_mode, interpolation="bicubic")
    split, why = split_transform(transform)
    assert split is not None, why
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (31, 77), (90, 25))]
    pixels = torch.stack([pixel_array(split.pixels(im), "x", (24, 24)) for im in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 24, 24)
    assert torch.equal(split.to_float(pixels), torch.stack([transform(im) for im in images]))


@pytest.mark.parametrize("transform,reason", [
    (T.Compose([T.RandomResizedCrop(24), T.ToTensor()]), "RandomResizedCrop is not one of the known deterministic steps"),
    (T.Compose([T.Resize(24), T.ToTensor()]), "do not end in a fixed image size"),
    (T.Compose([T.Resize(28), T.CenterCrop(24)]), "no ToTensor step"),
    (T.Compose([T.Resize(28), T.CenterCrop(24), T.ToTensor(), T.Normalize((0.5,), (0.5,)), T.RandomErasing()]),
     "after ToTensor it has Normalize, RandomErasing"),
    (T.Resize(24), "the transform is a Resize, not a torchvision Compose"),
])
def test_unknown_transforms_are_not_cached_and_the_log_says_why(transform, reason, tiny_imagenet, tmp_path, caplog):
    assert reason in split_transform(transform)[1]
    val = ImageNetFolder(tiny_imagenet, "val", transform)
    with caplog.at_level(logging.WARNING, logger="ptqbench"):
        loader, fields = evaluation_loader(val, transform, files_signature(val), ContentCache(tmp_path), True, 4, 0)
    assert fields["status"] == "off" and reason in fields["reason"]
    assert f"decoded image cache not used: {fields['reason']}; decoding the images in every evaluation" in caplog.text
    assert loader.dataset is val and not (tmp_path / "decoded").exists()


def test_decoded_loader_equals_the_decoding_loader_and_is_built_once(tiny_imagenet, tmp_path):
    transform = _timm_transform()
    val = eval_subset(ImageNetFolder(tiny_imagenet, "val", transform), 6)  # a Subset: 2 batches of 4 and 2
    want = _batches(make_loader(val, 4, 0))
    cache = ContentCache(tmp_path)
    loader, fields = evaluation_loader(val, transform, files_signature(val), cache, True, 4, 0)
    assert fields["status"] == "built" and fields["bytes"] == 6 * 3 * 24 * 24
    _assert_same_batches(_batches(loader), want)
    npy = tmp_path / "decoded" / f"{fields['key']}.npy"
    assert np.load(npy).shape == (6, 3, 24, 24) and (tmp_path / "decoded" / f"{fields['key']}.meta.json").is_file()
    assert not list((tmp_path / "decoded").glob(".*.tmp"))
    again, fields2 = evaluation_loader(val, transform, files_signature(val), cache, True, 4, 0)
    assert fields2["status"] == "hit" and fields2["key"] == fields["key"]
    _assert_same_batches(_batches(again), want)
    # a worker process gets the path, not the open file, and opens the file itself
    clone = pickle.loads(pickle.dumps(again.dataset))
    assert clone._file is None and torch.equal(clone[1][0], want[1][0])
    # the decoded array is a cache entry like the others: counted and evicted under cache.max_gb
    assert [e[2] for e in cache.entries()] == [npy]
    assert ContentCache(tmp_path, max_bytes=1).evict() == 1 and not npy.exists()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_a_pass_leaves_nothing_of_the_array_mapped_and_an_evicted_entry_stays_readable(tiny_imagenet, tmp_path):
    """A mapping kept every page a pass read resident for the rest of the job (the whole array
    after the FP evaluation, through calibration); the open file also survives an eviction."""
    transform = _timm_transform()
    val = eval_subset(ImageNetFolder(tiny_imagenet, "val", transform), 6)
    want = _batches(make_loader(val, 4, 0))
    loader, fields = evaluation_loader(val, transform, files_signature(val), ContentCache(tmp_path), True, 4, 0)
    npy = tmp_path / "decoded" / f"{fields['key']}.npy"
    _assert_same_batches(_batches(loader), want)
    assert str(npy) not in Path("/proc/self/maps").read_text()
    npy.unlink()  # another job evicts the entry while this one still evaluates
    _assert_same_batches(_batches(loader), want)
    with pytest.raises(DataNotFoundError, match="deleted while this job read them"):
        pickle.loads(pickle.dumps(loader.dataset))[0]  # a spawned worker opens the path anew


@pytest.mark.parametrize("preadv", [True, False])
def test_image_array_file_reads_any_range_and_refuses_a_short_file(tmp_path, monkeypatch, preadv):
    from ptqbench.data.decoded import ImageArrayFile

    if not preadv:
        monkeypatch.delattr("os.preadv", raising=False)  # a platform without it reads with os.pread
    a = np.random.default_rng(0).integers(0, 256, (7, 3, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    f = ImageArrayFile(tmp_path / "a.npy")
    assert f.shape == a.shape
    for lo, hi in ((0, 7), (2, 5), (6, 7)):
        assert np.array_equal(f.read(lo, hi), a[lo:hi])
    (tmp_path / "b.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        ImageArrayFile(tmp_path / "b.npy")
    np.save(tmp_path / "c.npy", a.astype(np.float32))
    with pytest.raises(ValueError, match="expected C-ordered uint8 images"):
        ImageArrayFile(tmp_path / "c.npy")


def test_other_files_or_transform_get_another_entry_and_the_off_switch_decodes(tiny_imagenet, tmp_path):
    transform = _timm_transform()
    val = ImageNetFolder(tiny_imagenet, "val", transform)
    cache = ContentCache(tmp_path)
    key = evaluation_loader(val, transform, files_signature(val), cache, True, 4, 0)[1]["key"]
    other_size = _timm_transform(input_size=(3, 16, 16))
    assert evaluation_loader(val, other_size, files_signature(val), cache, True, 4, 0)[1]["key"] != key
    sub = eval_subset(val, 5)
    assert evaluation_loader(sub, transform, files_signature(sub), cache, True, 4, 0)[1]["key"] != key
    other_mean = _timm_transform(mean=(0.5, 0.5, 0.5))  # normalization is applied after: same pixels, same entry
    assert evaluation_loader(val, other_mean, files_signature(val), cache, True, 4, 0)[1] == {
        "key": key, "bytes": 8 * 3 * 24 * 24, "status": "hit", "seconds": pytest.approx(0, abs=5)}
    loader, fields = evaluation_loader(val, transform, files_signature(val), cache, False, 4, 0)
    assert fields == {"status": "off", "reason": "data.decoded_cache=false"} and loader.dataset is val
    loader, fields = evaluation_loader(val, transform, files_signature(val), ContentCache(tmp_path, enabled=False), True, 4, 0)
    assert fields["reason"] == "cache.enabled=false" and loader.dataset is val


def test_a_damaged_entry_is_rebuilt(tiny_imagenet, tmp_path, caplog):
    transform = _timm_transform()
    val = ImageNetFolder(tiny_imagenet, "val", transform)
    cache = ContentCache(tmp_path)
    want = _batches(make_loader(val, 4, 0))
    key = evaluation_loader(val, transform, files_signature(val), cache, True, 4, 0)[1]["key"]
    npy = tmp_path / "decoded" / f"{key}.npy"
    npy.write_bytes(npy.read_bytes()[:-100])  # truncated (a full disk, a copy cut short)
    with caplog.at_level(logging.WARNING, logger="ptqbench"):
        loader, fields = evaluation_loader(val, transform, files_signature(val), cache, True, 4, 0)
    assert fields["status"] == "built" and f"decoded image cache entry {npy} is corrupted or incomplete" in caplog.text
    _assert_same_batches(_batches(loader), want)
    (tmp_path / "decoded" / f"{key}.meta.json").unlink()  # array renamed into place, meta never written
    assert evaluation_loader(val, transform, files_signature(val), cache, True, 4, 0)[1]["status"] == "built"


def test_a_cache_too_small_for_the_array_decodes_and_says_so(tiny_imagenet, tmp_path, caplog):
    transform = _timm_transform()
    val = ImageNetFolder(tiny_imagenet, "val", transform)
    with caplog.at_level(logging.INFO, logger="ptqbench"):
        loader, fields = evaluation_loader(val, transform, files_signature(val), ContentCache(tmp_path, max_bytes=1000),
                                           True, 4, 0)
    assert fields["status"] == "off" and "over cache.max_gb" in fields["reason"] and loader.dataset is val
    assert "raise cache.max_gb to cache them" in caplog.text


def _build_in_process(args: tuple[str, str]) -> str:
    root, cache_dir = args
    transform = _timm_transform()
    val = ImageNetFolder(Path(root), "val", transform)
    return decoded_images(val, split_transform(transform)[0], files_signature(val), ContentCache(Path(cache_dir)), 4, 0)[1]["status"]


def test_concurrent_jobs_build_the_array_once(tiny_imagenet, tmp_path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(3) as pool:
        statuses = pool.map(_build_in_process, [(str(tiny_imagenet), str(tmp_path))] * 3)
    assert sorted(statuses) == ["built", "hit", "hit"]


def test_decoded_cache_changes_neither_the_run_key_nor_the_sweep_group():
    from ptqbench.records import run_key
    from ptqbench.tracking import sweep_group
    from tests.conftest import compose_config

    assert run_key(compose_config("data.decoded_cache=false")) == run_key(compose_config())
    assert sweep_group(["method=repq", "data.decoded_cache=false"]) == sweep_group(["method=repq"])


@pytest.mark.data
@pytest.mark.parametrize("images", [24, pytest.param(None, marks=pytest.mark.slow)], ids=["24", "all"])
def test_shared_val_images_are_bit_identical_through_the_decoded_cache(images, shared_data, tmp_path):
    """DeiT-T's own transform on shared val images (24 by default, all 1300 with -m slow): the
    loader over the decoded array gives the tensors the decoding loader gives (torch.equal)."""
    import timm.data

    transform = timm.data.create_transform(**DEIT)
    val = eval_subset(ImageNetFolder(shared_data / "imagenet-mini", "val", transform), images)
    loader, fields = evaluation_loader(val, transform, files_signature(val), ContentCache(tmp_path), True, 10, 0)
    assert fields["status"] == "built" and fields["bytes"] == len(val) * 3 * 224 * 224
    _assert_same_batches(_batches(loader), _batches(make_loader(val, 10, 0)))


def test_a_job_gives_the_same_fp_logits_under_the_same_keys_with_and_without_it(tiny_imagenet, tmp_path):
    """Two method=fp jobs of timm's test ViT on the tiny folder, decoded cache on (one loader worker:
    the build and the reads go through worker processes) and off: same run key, same FP baseline
    key, bit-identical FP logits."""
    from ptqbench.run import run_job
    from tests.conftest import compose_config

    base = [f"data.root={tiny_imagenet}", "model.pretrained=false", "model.arch=test_vit", "model.tag=r160_in1k",
            "data.batch_size=4", "logger=none", "method=fp", "bits=w8a8"]
    on = run_job(compose_config(*base, f"results_dir={tmp_path / 'on'}", "data.workers=1"))
    off = run_job(compose_config(*base, f"results_dir={tmp_path / 'off'}", "data.workers=0", "data.decoded_cache=false"))
    assert on["status"] == off["status"] == "ok", (on.get("error"), off.get("error"))
    assert on["run_key"] == off["run_key"]
    assert on["data"]["decoded_cache"]["status"] == "built"
    assert off["data"]["decoded_cache"] == {"status": "off", "reason": "data.decoded_cache=false"}
    fp = {name: sorted((tmp_path / name / "cache" / "fp_eval").glob("*.pt")) for name in ("on", "off")}
    assert len(fp["on"]) == 1 and [p.name for p in fp["on"]] == [p.name for p in fp["off"]]
    logits_on, logits_off = (torch.load(fp[name][0], weights_only=True)["logits"] for name in ("on", "off"))
    assert logits_on.shape[0] == 8 and torch.equal(logits_on, logits_off)


@pytest.mark.data
def test_bench_decode_cell_measures_both_paths(shared_data):
    """`python -m ptqbench.bench --parts decode`'s cell, tiny: every speed is a measured number."""
    from ptqbench.bench.decode import decode_speed

    row = decode_speed(str(shared_data / "imagenet-mini"), images=8, batch=4, workers=0, synthetic=8)
    assert row["images"] == 8 and row["synthetic_images"] == 8
    for col in ("decode_img_s", "read_img_s", "speedup", "synthetic_cold_img_s", "synthetic_warm_img_s", "build_s"):
        assert row[col] > 0, row
    for col in ("read_rss_growth_mb", "synthetic_cold_rss_growth_mb", "synthetic_warm_rss_growth_mb"):
        assert isinstance(row[col], float), row  # can be 0 or below for 8 images
