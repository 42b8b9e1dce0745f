"""What a table shows: one dataclass shared by the report CLI, the `report:` block of the Hydra
config (experiments set it), and the sweep-end callback, so the three cannot drift apart."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ptqbench.errors import ConfigError
from ptqbench.report.names import METRICS

_BITS = re.compile(r"^w(\d+)a(\d+)$")


@dataclass
class ReportSpec:
    """Rows, columns, metric and layout of one table. `None` selections mean "whatever the runs
    have", in the standard order; explicit selections fix the layout, so a paper's grid keeps its
    rows and columns (shown as `--`) even before every run exists."""

    name: Optional[str] = None            # output files <name>.*; the CLI/callback pick the folder
    enabled: bool = True                  # build a table at the end of a sweep
    task: Optional[str] = None            # classification | detection; None: the runs' task
    metrics: Optional[list[str]] = None   # None: top1 (classification), box_ap + mask_ap (detection)
    models: Optional[list[str]] = None    # column order
    methods: Optional[list[str]] = None   # row order within a W/A group; "fp" adds the FP row
    bits: Optional[list[str]] = None      # e.g. ["w3a4", "w4a4"]
    calib_size: Optional[int] = None      # None: every size (a Calib column appears when several)
    where: dict[str, list[Any]] = field(default_factory=dict)  # config key -> accepted values
    decimals: Optional[int] = None        # None: the metric's (2 for top-1, 1 for AP)
    second_best: bool = True              # underline the second-best value
    caption: Optional[str] = None
    label: Optional[str] = None
    compare: bool = True                  # side by side with the published numbers when available
    reference_source: Optional[str] = None  # prefer published rows whose source starts with this
    fp_threshold: float = 0.1             # |our FP - paper FP| above this flags the model
    plots: bool = True

    def __post_init__(self) -> None:
        for m in self.metrics or []:
            if m not in METRICS:
                raise ConfigError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
        for b in self.bits or []:
            if not _BITS.match(b):
                raise ConfigError(f"bits {b!r}: write W and A bits as w4a4")
        if self.fp_threshold < 0:
            raise ConfigError(f"fp_threshold={self.fp_threshold}: must be >= 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ReportSpec":
        """Build from a config block; unknown keys are errors (a typo must not be ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown report option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        vals = dict(values)
        for key in ("metrics", "models", "methods", "bits"):
            if isinstance(vals.get(key), str):
                vals[key] = [s for s in vals[key].split(",") if s]
        where = vals.get("where") or {}
        vals["where"] = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in where.items()}
        return cls(**{k: v for k, v in vals.items()})

    def replace(self, **changes: Any) -> "ReportSpec":
        """A copy with the given options changed (`None` values are ignored: not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def parse_bits(name: str) -> tuple[int, int]:
    """`w4a4` -> (4, 4)."""
    m = _BITS.match(name)
    if not m:
        raise ConfigError(f"bits {name!r}: write W and A bits as w4a4")
    return int(m.group(1)), int(m.group(2))
