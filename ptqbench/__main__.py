"""`python -m ptqbench [-m] key=value ...`: Hydra entry point, one job or a sweep.

Thin by design: config composition is Hydra's, the job is `ptqbench.run.run_job`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("ptqbench")


def _sweep_group() -> tuple[bool, str]:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return True, Path(hc.sweep.dir).name
    return False, "single"


def _launcher() -> Optional[dict[str, Any]]:
    """The launcher config (`hydra.launcher`): joblib and submitit set the threads per job."""
    from omegaconf import OmegaConf

    try:
        launcher = HydraConfig.get().launcher
    except Exception:
        return None
    try:
        return OmegaConf.to_container(launcher, resolve=True)
    except Exception:  # an interpolation that does not resolve here: the raw values will do
        return OmegaConf.to_container(launcher, resolve=False)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> Optional[dict[str, Any]]:
    from ptqbench.errors import PTQBenchError
    from ptqbench.launch import configure_threads
    from ptqbench.run import run_job

    multirun, group = _sweep_group()
    try:
        configure_threads(cfg.get("threads"), _launcher())
        rec = run_job(cfg, group=group)
        return {"run_key": rec["run_key"], "status": rec["status"], "skipped": rec.get("skipped", False),
                "top1": rec.get("metrics", {}).get("top1")}
    except PTQBenchError as e:
        log.error("%s", e)
        if not multirun:
            sys.exit(2)
        return {"status": "failed", "error": str(e), "run_key": _key(cfg)}
    except Exception as e:
        if not multirun:
            raise
        log.exception("job failed (recorded; the sweep continues)")
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "run_key": _key(cfg)}


def _key(cfg: DictConfig) -> Optional[str]:
    """The failed job's record key, so the sweep-end report can list it (None if the config
    itself cannot be resolved)."""
    from ptqbench.records import run_key

    try:
        return run_key(cfg)
    except Exception:
        return None


if __name__ == "__main__":
    main()
