"""Where shared data lives: `$PTQBENCH_DATA`, else `../shared/data` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "PTQBENCH_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


def data_root() -> Path:
    """The shared data folder (imagenet-mini/, weights/, coco-tiny/), which may not exist."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else DEFAULT_DATA_ROOT


def data_root_origin() -> str:
    """Says where `data_root()` came from, for error messages."""
    env = os.environ.get(DATA_ENV)
    return f"${DATA_ENV}={env}" if env else f"default ../shared/data (${DATA_ENV} is unset)"
