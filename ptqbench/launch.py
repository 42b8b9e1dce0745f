"""Per-job settings that depend on how Hydra launched the job (basic, joblib, submitit).

Threads: jobs that share a machine must share its cores. With `threads=null` a job takes
- joblib: max(1, cpus // n_jobs) (n_jobs from `hydra.launcher.n_jobs`, -1 = every CPU, as joblib counts),
- submitit (SLURM or local): `hydra.launcher.cpus_per_task` when set (SLURM's `SLURM_CPUS_PER_TASK` first),
- otherwise torch's default.
`threads=N` always wins. The count goes to torch and to OMP_NUM_THREADS/MKL_NUM_THREADS (for
anything the job starts); the record's `threads` is what torch then uses.

Worker processes: a joblib (loky) worker sets multiprocessing's default start method to "loky",
whose Popen only starts loky's own Process class; a DataLoader started there with the default
context dies with "'Process' object has no attribute 'env'". `worker_context` gives the data
loaders a standard start method in every launcher.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from multiprocessing.context import BaseContext
from typing import Any, Mapping, Optional

log = logging.getLogger("ptqbench")

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: SLURM and taskset restrict it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def launcher_name(launcher: Optional[Mapping[str, Any]]) -> str:
    """'joblib', 'submitit_slurm', 'submitit_local', 'basic' or the launcher's class path."""
    target = str((launcher or {}).get("_target_") or "")
    if target.endswith("JoblibLauncher"):
        return "joblib"
    if target.endswith("submitit_launcher.SlurmLauncher"):
        return "submitit_slurm"
    if target.endswith("submitit_launcher.LocalLauncher"):
        return "submitit_local"
    if not target or target.endswith("BasicLauncher"):
        return "basic"
    return target


def joblib_workers(n_jobs: Any, cpus: int) -> int:
    """How many jobs joblib runs at once for `n_jobs` (joblib's rule: -1 = every CPU, -2 = all but one...)."""
    if n_jobs is None:
        return 1
    n = int(n_jobs)
    if n < 0:
        return max(1, cpus + 1 + n)
    return max(1, n)


def job_threads(threads: Any, launcher: Optional[Mapping[str, Any]],
                cpus: Optional[int] = None, env: Optional[Mapping[str, str]] = None) -> tuple[Optional[int], str]:
    """The intra-op thread count for one job and why (None: leave torch's default)."""
    if threads is not None:
        n = int(threads)
        if n < 1:
            from ptqbench.errors import ConfigError

            raise ConfigError(f"threads={threads!r}; use null or an integer >= 1")
        return n, "threads"
    cpus = available_cpus() if cpus is None else cpus
    env = os.environ if env is None else env
    name = launcher_name(launcher)
    if name == "joblib":
        workers = joblib_workers((launcher or {}).get("n_jobs", -1), cpus)
        return max(1, cpus // workers), f"joblib: {cpus} CPUs / {workers} parallel jobs"
    if name.startswith("submitit"):
        slurm = env.get("SLURM_CPUS_PER_TASK")
        if slurm and slurm.isdigit():
            return int(slurm), "SLURM_CPUS_PER_TASK"
        per_task = (launcher or {}).get("cpus_per_task")
        if per_task:
            return int(per_task), "hydra.launcher.cpus_per_task"
    return None, "torch default"


def worker_context() -> BaseContext:
    """The multiprocessing context for DataLoader workers: this process's start method when it is
    one of the standard ones (fork, spawn, forkserver), else the platform's default (first of
    `get_all_start_methods`). Inside a joblib worker the default is "loky", which cannot start the
    plain Process a DataLoader creates."""
    standard = multiprocessing.get_all_start_methods()
    method = multiprocessing.get_start_method(allow_none=True)
    return multiprocessing.get_context(method if method in standard else standard[0])


def configure_threads(threads: Any, launcher: Optional[Mapping[str, Any]]) -> int:
    """Apply `job_threads` to torch and the OpenMP/MKL environment; returns torch's thread count."""
    import torch

    n, why = job_threads(threads, launcher)
    if n is not None:
        torch.set_num_threads(n)
        for var in THREAD_ENV:
            os.environ[var] = str(n)
        log.info("torch threads: %d (%s)", n, why)
    return torch.get_num_threads()


def resolve_workers(workers: Any) -> int:
    """DataLoader worker processes for `data.workers` (auto: one per CPU, at most 8)."""
    if workers in (None, "auto"):
        return min(8, os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 0:
        from ptqbench.errors import ConfigError

        raise ConfigError(f"data.workers={workers!r}; use auto or an integer >= 0")
    return workers
