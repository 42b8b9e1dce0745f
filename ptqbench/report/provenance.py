"""Where a table came from, in one comment line on top of each of its files (.tex `%`, .md
`<!-- -->`, .csv `#`): the report's commit, the date, the command, the commits of the runs and
their run keys. Read a CSV with `pd.read_csv(path, skiprows=1)`.

Also the tidy one-row-per-run frame (`<name>_runs.csv`): run key, status, commit, config keys,
metrics, timings, peak memory, for whoever wants to redo the analysis with their own tools.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from ptqbench import __version__
from ptqbench.paths import git_commit
from ptqbench.report.collect import COST_COLUMNS, PROVENANCE_COLUMNS, flatten
from ptqbench.report.names import METRICS


def current_command(argv: Sequence[str] | None = None) -> str:
    """The command line of this process, as a user would retype it."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("ptqbench/report/__main__.py", "ptqbench\\report\\__main__.py")):
        argv = ["python", "-m", "ptqbench.report", *argv[1:]]
    elif argv and argv[0].endswith(("ptqbench/__main__.py", "ptqbench\\__main__.py")):
        argv = ["python", "-m", "ptqbench", *argv[1:]]
    return shlex.join(argv)


@dataclass
class Provenance:
    """The facts of the comment line; `date` and `commit` default to now and this checkout."""

    command: str
    run_keys: list[str]
    run_commits: list[str] = field(default_factory=list)
    commit: Optional[str] = None
    date: str = ""

    @classmethod
    def now(cls, runs: pd.DataFrame, failed: Optional[pd.DataFrame] = None, command: Optional[str] = None) -> "Provenance":
        keys = [*runs["run_key"].dropna()]
        if failed is not None and not failed.empty:
            keys += [*failed["run_key"].dropna()]
        commits = pd.Series([*runs.get("git_commit", pd.Series(dtype=object)).dropna()], dtype=object)
        counts = [f"{c} ({n})" for c, n in sorted(commits.value_counts().items())]
        return cls(command=command or current_command(), run_keys=sorted(set(keys)), run_commits=counts,
                   commit=git_commit(), date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def line(self) -> str:
        """One line (no newline and no `-->`, so it is safe in an HTML comment)."""
        parts = [f"ptqbench {__version__} report", f"commit {self.commit or 'unknown (not a git checkout)'}",
                 self.date, f"command: {self.command}",
                 f"run commits: {', '.join(self.run_commits) or 'none recorded'}",
                 f"runs ({len(self.run_keys)}): {' '.join(self.run_keys) or 'none'}"]
        return " | ".join(p for p in parts if p).replace("\n", " ").replace("-->", "-- >")


def runs_frame(runs: pd.DataFrame, failed: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per run (finished, then unfinished): identity, status, metrics, provenance, cost,
    then every config key of the run's setting as `config.<key>` (seeds are their own columns)."""
    metric_cols = [c for m in METRICS for c in (m, f"fp_{m}")]
    ident = ["run_key", "status", "group", "task", "model", "method", "w_bits", "a_bits", "calib_size", "calib_seed",
             "seed", "eval_images"]
    rows: list[dict[str, Any]] = []
    for rec in runs.to_dict("records"):
        row = {k: rec.get(k) for k in ident}
        row["status"] = "ok"
        row.update({k: rec.get(k) for k in (*metric_cols, *PROVENANCE_COLUMNS, *COST_COLUMNS)})
        row.update(_config_columns(rec.get("setting")))
        rows.append(row)
    for rec in ([] if failed is None else failed.to_dict("records")):
        row = {k: rec.get(k) for k in ident}
        row.update(git_commit=rec.get("git_commit"), finished_at=rec.get("finished_at"),
                   error=str(rec.get("error") or "").splitlines()[0][:300] if rec.get("error") else None)
        row.update(_config_columns(rec.get("setting")))
        rows.append(row)
    cols = [*ident, *metric_cols, *PROVENANCE_COLUMNS, *COST_COLUMNS, "error"]
    frame = pd.DataFrame(rows)
    for c in cols:
        if c not in frame.columns:
            frame[c] = None
    config = sorted(c for c in frame.columns if c.startswith("config."))
    frame = frame[[*cols, *config]]
    return frame


def _config_columns(setting: Optional[str]) -> dict[str, Any]:
    if not setting:
        return {}
    flat = flatten(json.loads(setting))
    return {f"config.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat.items()}


def write_csv(frame: pd.DataFrame, path: Path, provenance: Optional[str]) -> Path:
    """A CSV with the provenance comment as its first line (`pd.read_csv(path, skiprows=1)`)."""
    with open(path, "w", newline="") as f:
        if provenance:
            f.write(f"# {provenance}\n")
        frame.to_csv(f, index=False)
    return path
