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


# Allowed values of the layout options (the first is the default).
CHOICES: dict[str, tuple[str, ...]] = {
    "latex_float": ("table", "table*"),        # table*: spans both columns of a two-column page
    "fit": ("none", "resize", "small"),        # resize: \resizebox to the width; small: \small, tighter \tabcolsep
    "std": ("inline", "none", "separate"),     # separate: the std on its own line under the means
    "notes": ("short", "none", "full"),        # short: one paper-style sentence under the table
    "index_order": ("bits-method", "method-bits"),  # first columns: "W/A | Method" or "Method | W/A"
    "bold": ("significant", "value", "none"),  # significant: bold only a best the paired bootstrap separates
}
MIN_BITS, MAX_BITS = 2, 16  # the bit-widths a run accepts


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
    caption: Optional[str] = None         # plain text (escaped in LaTeX)
    latex_caption: Optional[str] = None   # raw LaTeX for the .tex caption (\cite{...} kept as written)
    label: Optional[str] = None
    compare: bool = True                  # side by side with the published numbers when available
    reference_source: Optional[str] = None  # prefer published rows whose source starts with this
    reference_dirs: list[str] = field(default_factory=list)  # more published-number CSV folders
    fp_threshold: float = 0.1             # |our FP - paper FP| above this flags the model
    with_published: Optional[list[str]] = None  # published rows of these methods in the table, marked
    cite: dict[str, str] = field(default_factory=dict)  # method -> BibTeX key (overrides names.CITATIONS)
    latex_float: str = "table"
    fit: str = "none"
    std: str = "inline"
    notes: str = "short"
    index_order: str = "bits-method"
    bold: str = "significant"
    alpha: float = 0.05                   # significance level of the paired bootstrap
    bootstrap: int = 2000                 # bootstrap resamples
    plots: bool = True

    def __post_init__(self) -> None:
        for m in self.metrics or []:
            if m not in METRICS:
                raise ConfigError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
        for b in self.bits or []:
            parse_bits(b)
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"report option {key}={getattr(self, key)!r}; choose one of {', '.join(allowed)}")
        if self.fp_threshold < 0:
            raise ConfigError(f"fp_threshold={self.fp_threshold}: must be >= 0")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha={self.alpha}: a significance level is between 0 and 1, e.g. 0.05")
        if self.bootstrap < 100:
            raise ConfigError(f"bootstrap={self.bootstrap}: use at least 100 resamples (default 2000)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ReportSpec":
        """Build from a config block; unknown keys are errors (a typo must not be ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown report option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        vals = dict(values)
        for key in ("metrics", "models", "methods", "bits", "with_published", "reference_dirs"):
            if isinstance(vals.get(key), str):
                vals[key] = [s.strip() for s in vals[key].split(",") if s.strip()]
        if vals.get("reference_dirs") is None:
            vals.pop("reference_dirs", None)
        cite = vals.get("cite")
        if isinstance(cite, str):
            cite = dict(_pair(item, "cite") for item in cite.split(",") if item.strip())
        vals["cite"] = {str(k): "" if v is None else str(v) for k, v in (cite or {}).items()}
        where = vals.get("where") or {}
        vals["where"] = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in where.items()}
        return cls(**{k: v for k, v in vals.items()})

    def replace(self, **changes: Any) -> "ReportSpec":
        """A copy with the given options changed (`None` values are ignored: not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def parse_bits(name: str) -> tuple[int, int]:
    """`w4a4` -> (4, 4); bit-widths a run cannot have (w99a99) are refused by name."""
    m = _BITS.match(name)
    if not m:
        raise ConfigError(f"bits {name!r}: write W and A bits as w4a4")
    w, a = int(m.group(1)), int(m.group(2))
    if not (MIN_BITS <= w <= MAX_BITS and MIN_BITS <= a <= MAX_BITS):
        raise ConfigError(f"bits {name!r}: W and A bits are between {MIN_BITS} and {MAX_BITS} (a run accepts no "
                          f"other), e.g. w4a4")
    return w, a


def _pair(item: str, option: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{option} {item!r}: write METHOD=KEY[,METHOD=KEY...], e.g. repq=li2023repq")
    return key.strip(), value.strip()
