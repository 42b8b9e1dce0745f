"""The work of one job, for every task: FP baseline (cached) -> plan -> patch -> quantize ->
evaluate -> the record's result fields.

The task (`ptqbench.tasks`) supplies the model, the data, the evaluation and the metrics; this
module fixes their order, so every task measures the same way. `run.py` wraps it in the job's
lifecycle (lock, skip, record, tracker).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ptqbench.cache import ContentCache, cache_from_config
from ptqbench.config import JobSettings
from ptqbench.hashing import code_version, content_key

log = logging.getLogger("ptqbench")


def job_method(settings: JobSettings) -> tuple[Any, Any]:
    """The job's bits and its method, built with the `quant` group (so the fully quantized mode is
    validated by the method for every task)."""
    from ptqbench.methods import Bits, build_method

    bits = Bits(settings.bits.w, settings.bits.a)
    eff = settings.effective
    method = build_method(eff["method"], bits, eff.get("quant"))
    return bits, method


def cached_fp_baseline(cache: ContentCache, evaluate_fp: Callable[[], dict[str, Any]], weights_fp: str,
                       eval_data: str, transform: str, required: str, code: str, fmt: str = "pt") -> dict[str, Any]:
    """The FP evaluation of a model on the evaluation images, computed once per (weights, images,
    transform, evaluation code) for the whole results folder (`fmt` "pt" keeps tensors such as the
    logits, "json" plain metrics). A cached entry without the `required` metric is recomputed.
    `cached` says whether this call read it (False: it was evaluated now)."""
    key = content_key("fp_eval", weights_fp, eval_data, transform, code)
    ran: list[bool] = []

    def compute() -> dict[str, Any]:
        ran.append(True)
        return evaluate_fp()

    res = cache.get_or_compute("fp_eval", key, compute, fmt=fmt,
                               describe={"weights": weights_fp, "eval_data": eval_data, "transform": transform[:200]})
    if required not in res:  # an entry written by other code: replace it
        log.warning("cached FP evaluation %s lacks %r; recomputing it", key, required)
        cache.invalidate("fp_eval", key, fmt)
        res = cache.get_or_compute("fp_eval", key, compute, fmt=fmt)
    return {**res, "cache_key": key, "cached": not ran}


def _fp_target_store(settings: JobSettings, cache: ContentCache, calib_key: Any) -> Any:
    """The cache of FP unit outputs for block reconstruction (None: not cached)."""
    from ptqbench.cache import ActivationStore

    if calib_key is None or not cache.enabled or not settings.cache.fp_activations:
        return None
    return ActivationStore(cache, calib_key)


def quantize(method: Any, module: nn.Module, inputs: Any, device: torch.device, scope: Optional[str] = None,
             fp_targets: Any = None, interval: float = 0.05) -> tuple[Any, Any, Any]:
    """Patch `module` for the method's plan (only under `scope` when given) and run the method on
    the calibration `inputs`; returns the QuantizedModel, the method's stats and the PhaseMeter
    of the quantization. `fp_targets` (an `ActivationStore` or None) becomes `qm.fp_targets`: the
    cache of FP unit outputs that block reconstruction reads instead of recomputing them."""
    from ptqbench.heap import large_blocks_unmapped
    from ptqbench.models import make_quantizable
    from ptqbench.profiling import PhaseMeter

    qm = make_quantizable(module, method.plan(), scope=scope)
    qm.fp_targets = fp_targets
    with PhaseMeter(device, interval=interval) as meter, large_blocks_unmapped():
        stats = method.quantize(qm, inputs)
    return qm, stats, meter


def eval_module(model: nn.Module, compile: bool) -> nn.Module:
    """The module that evaluates the quantized `model`: itself, or with `compile` (eval.compile)
    `torch.compile(model)`, after one eager fill of every layer's fake-quantized weight cache (the
    compiled graph reads the caches; evaluation does not change weights)."""
    if not compile:
        return model
    for m in model.modules():
        if hasattr(m, "quantized_weight"):
            with torch.no_grad():
                m.inference_weight() if hasattr(m, "inference_weight") else m.quantized_weight()
    return torch.compile(model)


def evaluated(task: Any, module: nn.Module, data: Any, desc: str) -> dict[str, Any]:
    """`task.evaluate`, with every activation served from a reused heap (ptqbench.heap: at the
    default batch of 100, fresh mappings cost a fifth of the evaluation's CPU time), after the
    task's warm-up forward outside it. Without the warm-up, what the first forward allocates for
    good landed above the evaluation's activations and held glibc's heap at its evaluation size;
    the next phase's allocations reused its holes and stayed resident: in a sweep's process every
    later job's calibration peaked about 500 MB higher (docs/benchmarks.md, "Later jobs of a sweep")."""
    from ptqbench.heap import every_block_reused, free_heap_returned

    task.warm_up(module, data)
    free_heap_returned()  # the warm-up's own activations, before the evaluation's grow the heap
    with every_block_reused():
        return task.evaluate(module, data, desc)


def _rounded(mb: Optional[float]) -> Optional[float]:
    return None if mb is None else round(mb, 1)


def execute(settings: JobSettings, results_dir: Path) -> dict[str, Any]:
    """The work of one job, from its validated settings (`ptqbench.validate.validate_config`,
    which also ran the task's own refusals); returns the record fields it produces."""
    from ptqbench.profiling import PhaseMeter, process_peak_rss_mb
    from ptqbench.tasks import get_task

    task = get_task(settings.task.name)
    bits, method = job_method(settings)
    torch.manual_seed(settings.run.seed)
    device = task.device(settings)
    data = task.open_data(settings, method)  # missing data fails before the weights load
    model = task.build_model(settings, device)
    eval_data = task.evaluation_data(settings, data, model, results_dir)

    cache = cache_from_config(settings.effective, results_dir)
    fp = cached_fp_baseline(cache, lambda: evaluated(task, model.module, eval_data, "eval fp"), model.fingerprint,
                            eval_data.signature, eval_data.transform, required=task.fp_required,
                            code=code_version("models", "tasks", "data"), fmt=task.fp_format)
    keep = task.fp_fields or tuple(k for k in fp if k != "cache_key")
    out: dict[str, Any] = {
        "model": model.fields, "data": eval_data.fields, "fp": {k: fp[k] for k in keep},
        "bits": {"w": bits.w, "a": bits.a, "name": bits.name},
        "device": str(device), "threads": torch.get_num_threads(),
    }
    plan = method.plan()
    q = None
    if plan is None:  # method=fp: the quantized metrics are the FP baseline itself
        out.update(timings={"calibration_s": 0.0, "eval_s": fp.get("eval_seconds", 0.0), **task.timings(None, fp)},
                   memory={}, quantized_modules={}, calibration={"size": 0, "ids": []}, method_stats={})
    else:
        calib = task.calibration_data(settings, data, model, cache)
        qm, stats, cal_meter = quantize(method, model.module, calib.inputs, device, scope=task.scope(settings),
                                        fp_targets=_fp_target_store(settings, cache, calib.cache_key))
        task.check_quantized(qm)
        with PhaseMeter(device) as eval_meter:
            q = evaluated(task, eval_module(qm.model, settings.eval.compile), eval_data, f"eval {settings.method_name} {bits.name}")
        out.update(
            timings={"calibration_s": round(cal_meter.seconds, 3), "eval_s": round(eval_meter.seconds, 3),
                     "fp_eval_s": round(fp.get("eval_seconds", 0.0), 3), **task.timings(q, fp)},
            memory={"calibration": cal_meter.as_dict(), "evaluation": eval_meter.as_dict(),
                    "process_peak_rss_mb": _rounded(process_peak_rss_mb()),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES")},  # ptqbench.heap.rerun_without_tcache
            quantized_modules=qm.counts(), quantizers=qm.quantizer_map(),
            protocol={"patch_input_bits": getattr(method.config, "patch_input_bits", None),
                      **method.quant.protocol(), "quantized_roles": qm.quantized_roles(), **task.protocol(settings)},
            calibration=calib.fields(), method_stats=stats,
        )
        out.update(task.diagnostics(settings, qm, calib, model))
    out["metrics"] = task.metrics(q, fp)
    out.update(task.extra_fields(q, fp, eval_data))
    out["cache"] = {"dir": str(cache.root), "enabled": cache.enabled, **cache.stats.as_dict()}
    return out

