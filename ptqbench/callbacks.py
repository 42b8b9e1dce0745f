"""Hydra callbacks: a one-screen summary at the end of a sweep."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("ptqbench")


class SweepSummary(Callback):
    """Collects each job's outcome in `<sweep dir>/jobs.jsonl` (works with any launcher that
    shares the file system) and prints the counts when the sweep ends; exits non-zero if any job
    failed, after every job has run."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(config.hydra.sweep.dir) / "jobs.jsonl"
        if path.exists():
            path.unlink()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(config.hydra.sweep.dir)
        except Exception:
            return
        if config.hydra.mode is None or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return
        try:
            ret = job_return._return_value if hasattr(job_return, "_return_value") else None
        except Exception:
            ret = None
        ret = ret if isinstance(ret, dict) else {"status": "failed", "error": "no return value"}
        line = {"overrides": list(job_return.overrides or []), **ret}
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / "jobs.jsonl", "a") as f:
            f.write(json.dumps(line, default=str) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(config.hydra.sweep.dir) / "jobs.jsonl"
        if not path.exists():
            return
        jobs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        ran = [j for j in jobs if j.get("status") == "ok" and not j.get("skipped")]
        skipped = [j for j in jobs if j.get("skipped")]
        failed = [j for j in jobs if j.get("status") != "ok"]
        log.info("sweep done: %d jobs, %d ran, %d skipped (already finished), %d failed; records in %s/runs",
                 len(jobs), len(ran), len(skipped), len(failed), config.results_dir)
        for j in failed:
            log.error("failed: %s: %s", " ".join(j.get("overrides", [])), j.get("error"))
        if failed:
            raise SystemExit(1)
