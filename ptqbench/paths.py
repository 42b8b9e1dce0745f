"""Where things live: the shared data (`$PTQBENCH_DATA`, else `../shared/data` beside the
repository) and the ptqbench checkout itself (its root and commit)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

from ptqbench.errors import DataNotFoundError

DATA_ENV = "PTQBENCH_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
# The paper-table experiments: one config per table in experiments/experiment/, stored as the
# `experiment` config group by ptqbench.config_store.
EXPERIMENTS_DIR = REPO_ROOT / "experiments"
EXPERIMENT_CONFIGS = EXPERIMENTS_DIR / "experiment"
EXPERIMENTS_RESOLVER = "ptqbench.experiments"


def experiment_names() -> list[str]:
    """The experiments `+experiment=NAME` accepts."""
    return sorted(p.stem for p in EXPERIMENT_CONFIGS.glob("*.yaml"))


def register_config_resolvers() -> None:
    """`${ptqbench.experiments:}`: the experiment names, for the --help footer."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(EXPERIMENTS_RESOLVER):
        OmegaConf.register_new_resolver(EXPERIMENTS_RESOLVER, lambda: ", ".join(experiment_names()))


def git_commit(repo: Path = REPO_ROOT) -> Optional[str]:
    """HEAD of the checkout (with '+dirty' for local changes to tracked files), None outside git:
    the code a record or a table came from."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def data_root() -> Path:
    """The shared data folder (imagenet-mini/, weights/, coco-tiny/), which may not exist."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else DEFAULT_DATA_ROOT


def data_root_origin() -> str:
    """Says where `data_root()` came from, for error messages."""
    env = os.environ.get(DATA_ENV)
    return f"${DATA_ENV}={env}" if env else f"default ../shared/data (${DATA_ENV} is unset)"


def resolve_dataset_root(value: Optional[str], key: str, default_name: str, what: str, example: str, layout: str) -> Path:
    """`value` (the config key `key`), else `$PTQBENCH_DATA/<default_name>`; a missing folder raises
    an error naming the path tried, where it came from, and both fixes."""
    if value:
        path, origin = Path(value).expanduser(), key
    else:
        path = data_root() / default_name
        origin = f"{key} unset, so $PTQBENCH_DATA/{default_name} from {data_root_origin()}"
    if not path.is_dir():
        raise DataNotFoundError(
            f"{what} root not found: tried {path} ({origin}). Fix: pass {key}={example} ({layout}), "
            f"or export PTQBENCH_DATA=/path/to/shared/data (which holds {default_name}/)."
        )
    return path
