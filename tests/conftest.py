"""Shared fixtures: a synthetic ImageNet tree (always available) and the shared real data
(skipped with a reason when absent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ptqbench.paths import data_root, data_root_origin

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(min(2, os.cpu_count() or 1))


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


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str | None] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m ptqbench ARGS` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None in `env` removes a variable
    return subprocess.run([sys.executable, "-m", "ptqbench", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
