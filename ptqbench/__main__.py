"""`python -m ptqbench [-m] key=value ...`: Hydra entry point, one job or a sweep.

Thin by design: config composition is Hydra's, the job is `ptqbench.run.run_job`.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before torch loads: the re-run replaces this process
    from ptqbench.heap import rerun_without_tcache

    rerun_without_tcache()

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ptqbench.config_store import register_configs

log = logging.getLogger("ptqbench")
register_configs()  # the schemas conf/ builds on, before Hydra composes


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
    """One job. Errors a user can act on (ptqbench.errors.user_message: a refused config, missing
    data, bad weights, an unwritable results folder) are one message and exit status 2 (a sweep
    records them and goes on); other exceptions keep their traceback. Ctrl-C stops the job, keeps
    any finished result (records.save_record) and exits with 130 (a shell's $? is 130 also in
    the rare exit by SIGINT that CPython chooses after an interrupt inside a C-level PyRun_* call)."""
    from ptqbench.errors import describe, user_message
    from ptqbench.run import run_job
    from ptqbench.tasks import get_task

    multirun, group = _sweep_group()
    try:
        rec = run_job(cfg, group=group, launcher=_launcher())
        headline = get_task(rec["config"]["task"]["name"]).headline
        return {"run_key": rec["run_key"], "status": rec["status"], "skipped": rec.get("skipped", False),
                "headline": headline, headline: rec.get("metrics", {}).get(headline)}
    except KeyboardInterrupt as e:
        log.error("%s", describe(e))
        raise SystemExit(130) from None
    except Exception as e:
        if user_message(e) is None:  # a bug: its traceback matters
            if not multirun:
                raise
            log.exception("job failed (recorded; the sweep continues)")
        else:
            log.error("%s", describe(e))
            if not multirun:
                sys.exit(2)
        return {"status": "failed", "error": describe(e), "run_key": _key(cfg)}


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
