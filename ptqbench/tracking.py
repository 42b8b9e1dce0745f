"""Experiment tracking: wandb (offline unless the user opts in), or nothing.

One wandb run per job, grouped by sweep; the resolved config and the summary metrics are logged,
and `finish()` is always called, also when the job fails. Offline runs land in
`<logger.dir>/wandb/offline-run-*`; upload them later with `wandb sync <that folder>`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Protocol

from ptqbench.errors import ConfigError

WANDB_MODES = ("offline", "online", "disabled")


class Tracker(Protocol):
    def log_summary(self, metrics: Mapping[str, Any]) -> None: ...

    def finish(self, failed: bool) -> None: ...


class NullTracker:
    """logger=none."""

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, failed: bool) -> None:
        pass


class WandbTracker:
    """A wandb run for one job."""

    def __init__(self, project: str, group: str, name: str, config: Mapping[str, Any], mode: str,
                 directory: str, entity: Optional[str] = None, tags: Optional[list[str]] = None) -> None:
        if mode not in WANDB_MODES:
            raise ConfigError(f"logger.mode={mode!r}; choose one of {WANDB_MODES}")
        import wandb

        os.makedirs(directory, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(
            project=project, entity=entity, group=group, name=name, config=dict(config), mode=mode,
            dir=directory, tags=tags, reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    @property
    def run_dir(self) -> Optional[str]:
        return getattr(self.run, "dir", None)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        self.run.log(flat)
        for k, v in flat.items():
            self.run.summary[k] = v

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def make_tracker(logger_cfg: Mapping[str, Any], group: str, name: str, config: Mapping[str, Any]) -> Tracker:
    """Build the tracker that `logger=<name>` asks for."""
    kind = logger_cfg.get("name", "none")
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        return _wandb_tracker(logger_cfg, group, name, config)
    raise ConfigError(f"unknown logger {kind!r}; choose logger=wandb or logger=none")


def _wandb_tracker(logger_cfg: Mapping[str, Any], group: str, name: str, config: Mapping[str, Any]) -> WandbTracker:
    return WandbTracker(
        project=logger_cfg.get("project", "ptqbench"), group=group, name=name, config=config,
        mode=logger_cfg.get("mode", "offline"), directory=str(logger_cfg.get("dir")),
        entity=logger_cfg.get("entity"), tags=list(logger_cfg.get("tags") or []),
    )


def log_sweep_report(logger_cfg: Mapping[str, Any], group: str, tables: Mapping[str, Any],
                     images: Mapping[str, str], config: Mapping[str, Any]) -> Optional[str]:
    """Log a sweep's tables (name -> DataFrame) as wandb Tables and its plots (name -> image path)
    as wandb Images to one run named `summary` in the jobs' group, with the jobs' mode and folder.
    Returns that run's folder; None when the logger is not wandb."""
    if logger_cfg.get("name", "none") != "wandb":
        return None
    tracker = _wandb_tracker(logger_cfg, group, "summary", config)
    wandb = tracker._wandb
    failed = True
    try:
        payload: dict[str, Any] = {f"report/{k}": wandb.Table(dataframe=_wandb_frame(v)) for k, v in tables.items()}
        payload.update({f"report/{k}": wandb.Image(p) for k, p in images.items()})
        tracker.run.log(payload)
        failed = False
        return tracker.run_dir
    finally:
        tracker.finish(failed)


def _wandb_frame(df: Any) -> Any:
    """wandb Tables take plain Python values: pandas' NA and NaN become None."""
    return df.astype(object).where(df.notna(), None)
