"""A Hydra callback that checks the results folder before Hydra writes its logs there.

Hydra creates `<results_dir>/logs/...` before the job function runs, so a read-only folder, a full
disk or a path through a file would end in Hydra's OSError traceback instead of a StorageError that
names the path and the fix. Light on purpose (no torch): it runs in the process that launches a sweep.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ptqbench.errors import PTQBenchError, user_message
from ptqbench.fileio import check_writable


class Preflight(Callback):
    """On run and multirun start: `check_writable(results_dir)`; a StorageError is one line
    naming the path and the fix, and exit status 2, like any refused job."""

    def _check(self, config: DictConfig) -> None:
        try:
            check_writable(Path(str(config.results_dir)).expanduser())
        except PTQBenchError as e:
            print(f"ptqbench: {user_message(e)}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)
