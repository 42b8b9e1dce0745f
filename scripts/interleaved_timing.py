"""Best CPU time of each case, the cases run in turn round after round, so load that comes and goes
on a shared machine falls on all of them alike (the timing scripts here import it)."""

from __future__ import annotations

import time
from typing import Callable


def best_cpu_seconds(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """{name: the least process CPU time of one call} over `rounds` interleaved rounds."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, run in cases.items():
            t = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - t)
    return best
