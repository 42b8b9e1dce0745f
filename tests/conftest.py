"""Shared fixtures: tiny timm ViT / Swin models for unit tests, a synthetic ImageNet tree (always
available), the shared real data (skipped with a reason when absent) and one results folder for
every shared-data end-to-end job of a session (the FP baseline and calibration batch are computed
once and reused through the results cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from ptqbench.config_store import register_configs
from ptqbench.paths import data_root, data_root_origin

register_configs()  # the schemas conf/ builds on, before any test composes it
REPO = Path(__file__).resolve().parents[1]
# The cores are shared by the xdist workers (pyproject's addopts): one worker's torch threads
# each, also for the jobs its tests start as subprocesses (they read OMP_NUM_THREADS). Threads
# beyond the cores make OpenMP's barriers spin against each other (measured: the detection job
# test 41 s alone, 103 s with two 2-thread workers on 2 cores).
THREADS = max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
torch.set_num_threads(THREADS)


def make_tiny_vit(depth: int = 2, embed_dim: int = 32, seed: int = 0) -> VisionTransformer:
    """A timm ViT small enough for unit tests (32 px, 4x4 patches of 8 px, 10 classes); seeded so
    a test's numbers do not depend on what ran before it."""
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=embed_dim, depth=depth, num_heads=2,
                             num_classes=10).eval()


def make_tiny_swin(seed: int = 0, img_size: int = 32, window_size: int = 4, embed_dim: int = 16,
                   depths: tuple[int, ...] = (1, 1), num_heads: tuple[int, ...] = (1, 2)) -> SwinTransformer:
    """A timm Swin small enough for unit tests (two stages, so patch merging is covered)."""
    torch.manual_seed(seed)
    return SwinTransformer(img_size=img_size, patch_size=4, window_size=window_size, embed_dim=embed_dim,
                           depths=depths, num_heads=num_heads, num_classes=10).eval()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "imagenet-mini" / "val").is_dir() or not (root / "weights").is_dir():
        pytest.skip(f"shared data not found at {root} ({data_root_origin()}); export PTQBENCH_DATA=/path/to/shared/data")
    return root


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet layout with the 1000-synset file, 8 train and 8 val images of classes 0, 100, ... 700
    (so a renumbering bug would show), random pixels."""
    root = tmp_path_factory.mktemp("tiny_imagenet")
    synsets = [f"n{i:08d}" for i in range(1000)]
    (root / "synsets.txt").write_text("\n".join(synsets) + "\n")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(0, 800, 100):
            d = root / split / synsets[c]
            d.mkdir(parents=True)
            for j in range(1 if split == "val" else 2):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{split}_{c}_{j}.JPEG")
    return root


def compose_config(*overrides: str):
    """The job config `python -m ptqbench OVERRIDES` would run, composed in this process (for tests
    where a separate process is not the point)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str | None] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m ptqbench ARGS` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None in `env` removes a variable
    return subprocess.run([sys.executable, "-m", "ptqbench", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def e2e_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder for all shared-data end-to-end jobs of the session: the FP baseline and
    the calibration batch are computed by the first job and read from the results cache after."""
    return tmp_path_factory.mktemp("e2e_results")


_SHARED_JOBS: dict[tuple[str, ...], dict] = {}


def shared_data_job(results: Path, shared_data: Path, *overrides: str) -> dict:
    """A DeiT-Tiny job on the shared data (32 calibration images, all 1300 val images) run in this
    process; each override set runs once per session, so comparisons reuse earlier jobs."""
    if overrides not in _SHARED_JOBS:
        from ptqbench.run import run_job

        rec = run_job(compose_config(f"results_dir={results}", "logger=none", "calib.size=32",
                                     f"data.root={shared_data / 'imagenet-mini'}", *overrides))
        assert rec["status"] == "ok", rec.get("error")
        assert rec["data"]["eval_images"] == 1300
        assert rec["calibration"]["size"] == (0 if "method=fp" in overrides else 32)
        _SHARED_JOBS[overrides] = rec
    return _SHARED_JOBS[overrides]
