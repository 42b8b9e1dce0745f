"""Progress reporting for every loop of the package: a tqdm bar on a terminal, plain log lines
everywhere else.

A tqdm bar redraws itself with carriage returns; written to a file (SLURM output, `| tee`, a
Hydra job log) every redraw stays, so a 6-job sweep's log would hold 60 KB of `calibrate: x%` before
its first result. Off a terminal this module logs one line per `PTQBENCH_PROGRESS_EVERY` percent
instead (through the `ptqbench.progress` logger, so the lines also reach Hydra's job log).

Environment:
    PTQBENCH_PROGRESS        auto (default: bar on a terminal or in a notebook, lines otherwise),
                             bar, log, or off.
    PTQBENCH_PROGRESS_EVERY  percent between two log lines, 1..100 (default 25).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional

from ptqbench.errors import ConfigError

log = logging.getLogger("ptqbench.progress")

MODES = ("auto", "bar", "log", "off")
DEFAULT_EVERY = 25


def progress_mode() -> str:
    """The mode `PTQBENCH_PROGRESS` asks for, with `auto` resolved for this process."""
    mode = os.environ.get("PTQBENCH_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"PTQBENCH_PROGRESS={mode!r}; choose one of {', '.join(MODES)} "
                          "(auto: a bar on a terminal, one log line per step otherwise)")
    if mode != "auto":
        return mode
    interactive = getattr(sys.stderr, "isatty", lambda: False)() or "ipykernel" in sys.modules
    return "bar" if interactive else "log"


def progress_every() -> int:
    """Percent between two log lines (`PTQBENCH_PROGRESS_EVERY`)."""
    raw = os.environ.get("PTQBENCH_PROGRESS_EVERY", str(DEFAULT_EVERY)).strip()
    try:
        every = int(raw)
    except ValueError:
        every = -1
    if not 1 <= every <= 100:
        raise ConfigError(f"PTQBENCH_PROGRESS_EVERY={raw!r}; use a whole percent between 1 and 100 "
                          f"(default {DEFAULT_EVERY}: a line at 25, 50, 75 and 100%)")
    return every


class LogProgress:
    """tqdm's subset used in ptqbench (iterate, update, set_postfix, close, n, total), writing a
    log line each time the count crosses another `every` percent of `total`; without a total,
    one line when it closes."""

    def __init__(self, iterable: Optional[Iterable[Any]], total: Optional[int], desc: str, unit: str,
                 every: int, logger: logging.Logger = log) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = desc
        self.unit = unit
        self.every = every
        self.n = 0
        self._logger = logger
        self._postfix = ""
        self._next_pct = every
        self._closed = False
        self._t0 = time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **kwargs: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        pct = 100.0 * self.n / self.total
        if pct + 1e-9 >= self._next_pct:
            self._emit(pct)
            while self._next_pct <= pct + 1e-9:
                self._next_pct += self.every

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.total and self.n:
            self._emit(None)

    def _emit(self, pct: Optional[float]) -> None:
        elapsed = time.perf_counter() - self._t0
        where = f"{pct:3.0f}% ({self.n}/{self.total} {self.unit})" if pct is not None else f"{self.n} {self.unit}"
        extra = f", {self._postfix}" if self._postfix else ""
        self._logger.info("%s: %s in %.1f s%s", self.desc, where, elapsed, extra)


class _Silent(LogProgress):
    """PTQBENCH_PROGRESS=off, or a caller's `disable=True`: counts, prints nothing."""

    def _emit(self, pct: Optional[float]) -> None:
        pass


def progress(iterable: Optional[Iterable[Any]] = None, *, total: Optional[int] = None, desc: str = "",
             unit: str = "it", leave: bool = False, disable: bool = False) -> Any:
    """A progress indicator over `iterable` (or one advanced with `update()`): what every loop of
    ptqbench uses instead of calling tqdm directly."""
    mode = "off" if disable else progress_mode()
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    if mode == "off":
        return _Silent(iterable, total, desc, unit, 100)
    return LogProgress(iterable, total, desc, unit, progress_every())
