"""`RunRecord`: the schema of a job's record (`<results_dir>/runs/<run_key>.json`).

Written in one place (`ptqbench.run`) and read through `RunRecord.from_dict`, which brings a
record of any earlier schema to the current one, so readers never patch old records by hand.
On disk a record stays a flat JSON object: the job's lifecycle fields below plus the result
fields the pipeline produced (`metrics`, `timings`, `model`, ...), kept in `results`.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

# 1: records before the schema was versioned (no `schema_version` key; no `quant` group in the
#    config of records older than the fully quantized mode). 2: `schema_version` written.
RECORD_SCHEMA = 2

# Config keys added after records existed, with the value those older records implicitly had.
_IMPLIED_CONFIG = {"quant": {"full": False}}
_ALWAYS = ("run_key", "status", "config", "wandb")  # written even when empty (wandb: null without a tracker)


@dataclass
class RunRecord:
    """One job's record: who ran what, when, how it ended, and its result fields."""

    run_key: Optional[str]
    status: Optional[str]  # running, ok, failed
    config: dict[str, Any] = field(default_factory=dict)
    semantic_config: dict[str, Any] = field(default_factory=dict)
    group: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: Optional[str] = None
    host: Optional[str] = None
    cpu: dict[str, Any] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    wandb: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    traceback: Optional[str] = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False  # set on a finished record returned instead of rerunning it; never saved
    results: dict[str, Any] = field(default_factory=dict)  # the pipeline's fields (metrics, timings, ...)
    schema_version: int = RECORD_SCHEMA

    @classmethod
    def start(cls, run_key: str, group: str, config: dict[str, Any], semantic: dict[str, Any], started_at: str,
              git_commit: Optional[str]) -> "RunRecord":
        """A new record of a job that is starting on this machine."""
        import torch

        return cls(run_key=run_key, status="running", group=group, started_at=started_at, config=config,
                   semantic_config=semantic, versions=versions(), git_commit=git_commit, host=platform.node(),
                   # the same job lands ~1 point apart on CPUs with other vector units (docs/results.md)
                   cpu={"machine": platform.machine(), "capability": torch.backends.cpu.get_cpu_capability()},
                   argv=list(sys.argv))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunRecord":
        """The record `d` (as read from disk, any schema version), upgraded to the current schema."""
        names = {f.name for f in dataclasses.fields(cls)} - {"results", "schema_version"}
        known = {k: v for k, v in d.items() if k in names}
        results = {k: v for k, v in d.items() if k not in names and k != "schema_version"}
        config = dict(known.get("config") or {})  # a copy: the caller's dict is left as it was
        for group, implied in _IMPLIED_CONFIG.items():
            config.setdefault(group, dict(implied))
        known.update(config=config, attempts=list(known.get("attempts") or []),
                     skipped=bool(known.get("skipped", False)))
        known.setdefault("run_key", None)
        known.setdefault("status", None)
        return cls(**known, results=results)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.results.get("metrics") or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to disk (and returned by `run_job`)."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # a lifecycle field not set (None, empty, skipped=False) is left out, as before the schema
            if f.name not in ("results", "schema_version") and (f.name in _ALWAYS or value not in (None, False, [], {})):
                out[f.name] = value
        out.update(self.results)
        return out


def versions() -> dict[str, str]:
    """Versions of ptqbench, python and the libraries a result depends on."""
    from importlib import metadata

    import hydra
    import numpy
    import timm
    import torch

    from ptqbench import __version__

    out = {"ptqbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "timm": timm.__version__, "hydra": hydra.__version__, "numpy": numpy.__version__}
    # the detection extra, when installed; read from the package metadata so a classification job
    # never imports mmdet/mmcv
    for dist in ("mmdet", "mmcv", "mmengine", "pycocotools"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
