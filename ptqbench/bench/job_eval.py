"""The FP evaluation of the shared-data images exactly as a job runs it (its settings, data path and
`ptqbench.pipeline.evaluated`), with the heap that evaluation now uses or with fresh mappings for
large blocks as before: CPU time, page faults and peak RSS of each, in its own process."""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path
from typing import Any

import torch



def job_eval(heap_mode: str, batch: int, limit: int | None) -> dict[str, Any]:
    """`heap_mode`: "reused" (the job's `pipeline.evaluated`) or "mapped" (`task.evaluate` alone,
    without `heap.every_block_reused`). Logits are summed in float64 so the two rows can be compared."""
    from ptqbench.config_store import composed_job_settings
    from ptqbench.pipeline import evaluated, job_method
    from ptqbench.tasks import get_task

    if heap_mode not in ("reused", "mapped"):
        raise ValueError(f"heap_mode={heap_mode!r}; choose reused or mapped")
    results = Path(tempfile.mkdtemp(prefix="ptqbench-job-eval-"))
    overrides = ["logger=none", "report.enabled=false", "method=fp", "data.workers=0", f"data.batch_size={batch}",
                 f"results_dir={results}"] + ([f"data.eval_limit={limit}"] if limit else [])
    settings = composed_job_settings(overrides)
    task = get_task(settings.task.name)
    _, method = job_method(settings)
    device = task.device(settings)
    data = task.open_data(settings, method)
    model = task.build_model(settings, device)
    eval_data = task.evaluation_data(settings, data, model, results)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    if heap_mode == "reused":
        res = evaluated(task, model.module, eval_data, "eval fp")
    else:
        res = task.evaluate(model.module, eval_data, "eval fp")
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"heap": heap_mode, "batch": batch, "images": res["images"], "threads": torch.get_num_threads(),
            "top1": round(res["top1"], 3), "logits_sum": round(float(res["logits"].double().sum()), 6),
            "wall_s": round(res["eval_seconds"], 1), "cpu_s": round(cpu, 1),
            "sys_s": round(r1.ru_stime - r0.ru_stime, 1), "minor_faults": r1.ru_minflt - r0.ru_minflt,
            "peak_rss_mb": round(r1.ru_maxrss / 1024)}

