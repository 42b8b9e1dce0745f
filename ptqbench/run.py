"""One job: resolve the config, skip it if already done, quantize, evaluate, record, log.

Before any work the whole config is validated and the results folder checked (a refused job
leaves no record). Once the job runs, whatever happens it leaves a record: `ok` with metrics, or
`failed` with the error and traceback (a relaunch reruns failed jobs and skips finished ones);
a failed or interrupted rerun never replaces an `ok` record (`records.save_record`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from ptqbench import __version__
from ptqbench.cache import ContentCache, cache_from_config, code_version, content_key
from ptqbench.errors import ConfigError, add_note, describe
from ptqbench.fileio import check_writable
from ptqbench.paths import git_commit
from ptqbench.validate import resolve_device
from ptqbench.per_image import PER_IMAGE_KEY, per_image_field
from ptqbench.records import STATUS_FAILED, STATUS_OK, finished, record_path, run_key, save_record, semantic_config
from ptqbench.records import job_lock

log = logging.getLogger("ptqbench")


def resolve_workers(workers: Any) -> int:
    if workers in (None, "auto"):
        return min(8, os.cpu_count() or 1)
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"data.workers={workers!r}; use auto or an integer >= 0")
    return workers


def versions() -> dict[str, str]:
    import hydra
    import numpy
    import timm

    out = {"ptqbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "timm": timm.__version__, "hydra": hydra.__version__, "numpy": numpy.__version__}
    # the detection extra, when installed; read from the package metadata so a classification job
    # never imports mmdet/mmcv
    from importlib import metadata

    for dist in ("mmdet", "mmcv", "mmengine", "pycocotools"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def sha_of(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def cached_fp_baseline(cache: ContentCache, evaluate_fp: Callable[[], dict[str, Any]], weights_fp: str,
                       eval_data: str, transform: str, required: str, code: str, fmt: str = "pt") -> dict[str, Any]:
    """The FP evaluation of a model on the evaluation images, computed once per (weights, images,
    transform, evaluation code) for the whole results folder (`fmt` "pt" keeps tensors such as the
    logits, "json" plain metrics). A cached entry without the `required` metric is recomputed."""
    key = content_key("fp_eval", weights_fp, eval_data, transform, code)
    hits = cache.stats.hits
    res = cache.get_or_compute("fp_eval", key, evaluate_fp, fmt=fmt,
                               describe={"weights": weights_fp, "eval_data": eval_data, "transform": transform[:200]})
    if required not in res:  # an entry written by other code: replace it
        log.warning("cached FP evaluation %s lacks %r; recomputing it", key, required)
        cache.invalidate("fp_eval", key, fmt)
        res = cache.get_or_compute("fp_eval", key, evaluate_fp, fmt=fmt)
    return {**res, "cache_key": key, "cached": cache.stats.hits > hits}


def run_job(cfg: DictConfig, group: str = "single") -> dict[str, Any]:
    """Run (or skip) the job `cfg` describes and return its record. First the whole config is
    validated and the results folder checked (ConfigError / StorageError: nothing run, nothing
    recorded). The job's lock is held throughout: a concurrent sweep that reaches the same job
    waits, then skips it if it finished."""
    from ptqbench.validate import validate_config

    validate_config(cfg)
    results_dir = Path(cfg.results_dir).expanduser()
    check_writable(results_dir / "runs")
    with job_lock(results_dir, run_key(cfg)):
        return _run_job(cfg, group)


def _run_job(cfg: DictConfig, group: str = "single") -> dict[str, Any]:
    results_dir = Path(cfg.results_dir).expanduser()
    key = run_key(cfg)
    path = record_path(results_dir, key)
    if cfg.get("resume", True):
        done = finished(results_dir, key)
        if done is not None:
            log.info("skip %s: already finished (%s); resume=false reruns it", key, path)
            done["skipped"] = True
            return done

    resolved = OmegaConf.to_container(cfg, resolve=True)
    record: dict[str, Any] = {
        "run_key": key, "status": "running", "group": group,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": resolved, "semantic_config": semantic_config(cfg),
        "versions": versions(), "git_commit": git_commit(), "host": platform.node(),
        # the same job lands ~1 point apart on CPUs with other vector units (docs/results.md)
        "cpu": {"machine": platform.machine(), "capability": torch.backends.cpu.get_cpu_capability()},
        "argv": sys.argv,
    }
    from ptqbench.tracking import make_tracker

    tracker = None
    failed = True
    try:
        full = f"-full{cfg.quant.bits}" if cfg.get("quant") is not None and cfg.quant.get("full") else ""
        name = f"{cfg.model.name}-{cfg.method.name}-w{cfg.bits.w}a{cfg.bits.a}{full}-c{cfg.calib.size}s{cfg.calib.seed}"
        log.info("job %s (%s) started; record: %s", key, name, path)
        tracker = make_tracker(resolved.get("logger") or {}, group=group, name=name, config=resolved)
        record["wandb"] = tracker.info()
        record.update(_execute(cfg, results_dir, record))
        record["status"] = STATUS_OK
        failed = False
        tracker.log_record(record)
        return record
    except BaseException as e:
        failed = True  # also when the tracker fails after the work succeeded
        record["status"] = STATUS_FAILED
        record["error"] = describe(e, notes=False)
        record["traceback"] = traceback.format_exc()
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        saved = save_record(path, record, interrupted=isinstance(e, KeyboardInterrupt))  # first: the record matters most
        if saved.get("status") == STATUS_OK:
            top1 = (saved.get("metrics") or {}).get("top1")
            add_note(e, f"{path} keeps its finished result of {saved.get('finished_at')}"
                        + (f" (top-1 {top1:.2f})" if isinstance(top1, (int, float)) else "")
                        + f"; this attempt is listed under its `attempts` ({len(saved['attempts'])} so far)")
        if tracker is not None:
            tracker.log_summary({"status": STATUS_FAILED})
        raise
    finally:
        if not failed:
            record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            record.update(save_record(path, record))
        if tracker is not None:
            tracker.finish(failed)
        if not failed:
            _print_summary(record, path)


def _execute(cfg: DictConfig, results_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The work of one job; returns the record fields it produces."""
    if cfg.task.name == "detection":
        from ptqbench.tasks.detection import execute

        return execute(cfg, results_dir)
    if cfg.task.name != "classification":
        raise ConfigError(f"task={cfg.task.name!r} is unknown; use task=classification or task=detection")
    return _execute_classification(cfg, results_dir)


def setup_job(cfg: DictConfig) -> tuple[Any, Any, torch.device, Any]:
    """What every classification job (and the analysis app) starts from: its bits, the built
    method, the device, the model entry; torch threads and seed set from the config."""
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import model_entry

    bits = Bits(int(cfg.bits.w), int(cfg.bits.a))
    quant_cfg = cfg.get("quant")
    method = build_method(OmegaConf.to_container(cfg.method, resolve=True), bits,
                          OmegaConf.to_container(quant_cfg, resolve=True) if quant_cfg is not None else None)
    device = resolve_device(str(cfg.device))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    return bits, method, device, model_entry(cfg.model.name, cfg.model.get("arch"), cfg.model.get("tag"))


def _execute_classification(cfg: DictConfig, results_dir: Path) -> dict[str, Any]:
    """The work of one classification job."""
    import timm.data

    from ptqbench.cache import ActivationStore, fp_activation_store
    from ptqbench.data import (
        ImageNetFolder, calibration_batch, calibration_indices, eval_subset, files_signature, make_loader, resolve_root,
        subset_ids,
    )
    from ptqbench.models import create_model, make_quantizable, state_fingerprint
    from ptqbench.profiling import PhaseMeter
    from ptqbench.analyze.sqnr import layer_sqnr_for_job
    from ptqbench.tasks.classification import evaluate

    # the config is valid here (validate_config): bits are ints, the split is not the eval split
    bits, method, device, entry = setup_job(cfg)
    # fail on missing data or too few calibration images before loading weights (transforms come
    # with the model)
    root = resolve_root(cfg.data.root)
    val_ds = ImageNetFolder(root, cfg.data.val_split)
    calib_ds = ImageNetFolder(root, cfg.calib.split) if method.plan() is not None else None
    if calib_ds is not None:
        calibration_indices(calib_ds, int(cfg.calib.size), int(cfg.calib.seed))
    model, weights_info = create_model(entry, cfg.model.get("checkpoint"), cfg.model.get("weights_dir"),
                                       bool(cfg.model.get("pretrained", True)), bool(cfg.model.get("allow_download", True)))
    model.to(device)
    weights_info["fingerprint"] = state_fingerprint(model)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**data_cfg)
    val_ds.transform = transform
    val = eval_subset(val_ds, cfg.data.eval_limit)
    loader = make_loader(val, int(cfg.data.batch_size), resolve_workers(cfg.data.workers))
    eval_ids = subset_ids(val)

    cache = cache_from_config(cfg, results_dir)
    fp = cached_fp_baseline(cache, lambda: evaluate(model, loader, device, desc="eval fp", keep_logits=True),
                            weights_info["fingerprint"], f"{root}|{cfg.data.val_split}|{files_signature(val)}",
                            repr(transform), required="logits", code=code_version("models", "tasks", "data"))
    out: dict[str, Any] = {
        "model": {"name": cfg.model.name, **weights_info, "data_config": {k: str(v) for k, v in data_cfg.items()}},
        "data": {"root": str(root), "eval_images": len(eval_ids), "eval_ids_sha": sha_of(eval_ids)},
        "fp": {k: fp[k] for k in ("top1", "top5", "images", "cached")},
        "bits": {"w": bits.w, "a": bits.a, "name": bits.name},
        "device": str(device), "threads": torch.get_num_threads(),
    }
    plan = method.plan()
    if plan is None:  # method=fp: the quantized metrics are the FP baseline itself
        q = {"top1": fp["top1"], "top5": fp["top5"]}
        out.update(timings={"calibration_s": 0.0, "eval_s": fp.get("eval_seconds", 0.0)}, memory={},
                   quantized_modules={}, calibration={"size": 0, "ids": []}, method_stats={})
    else:
        calib_ds.transform = transform
        size, seed = int(cfg.calib.size), int(cfg.calib.seed)
        calib_key = content_key("calib", str(root), cfg.calib.split, size, seed, repr(transform), code_version("data"),
                                files_signature(calib_ds, calibration_indices(calib_ds, size, seed)))
        hits = cache.stats.hits
        batch = cache.get_or_compute("calib", calib_key, lambda: dict(zip(("images", "ids"), calibration_batch(calib_ds, size, seed))),
                                     describe={"root": str(root), "split": cfg.calib.split, "size": size, "seed": seed})
        calib, calib_ids, calib_cached = batch["images"], list(batch["ids"]), cache.stats.hits > hits
        qm = make_quantizable(model, plan)
        store = ActivationStore(cache, calib_key) if cache.enabled and cfg.get("cache", {}).get("fp_activations", True) else None
        with PhaseMeter(device) as cal_meter, fp_activation_store(store):
            stats = method.quantize(qm, calib.to(device))
        with PhaseMeter(device) as eval_meter:
            q = evaluate(qm.model, loader, device, desc=f"eval {cfg.method.name} {bits.name}", keep_logits=True)
        q["agree_fp_top1"] = 100.0 * float((q["logits"].argmax(1) == fp["logits"].argmax(1)).float().mean())
        out.update(
            timings={"calibration_s": round(cal_meter.seconds, 3), "eval_s": round(eval_meter.seconds, 3),
                     "fp_eval_s": round(fp.get("eval_seconds", 0.0), 3)},
            memory={"calibration": cal_meter.as_dict(), "evaluation": eval_meter.as_dict()},
            quantized_modules=qm.counts(), quantizers=qm.quantizer_map(),
            protocol={"patch_input_bits": getattr(method.config, "patch_input_bits", None),
                      **method.quant.protocol(), "quantized_roles": qm.quantized_roles()},
            calibration={"size": len(calib_ids), "seed": seed, "split": cfg.calib.split, "ids": calib_ids,
                         "cache_key": calib_key, "cached": calib_cached},
            method_stats=stats,
        )
        out["layer_sqnr"] = layer_sqnr_for_job(cfg, qm, calib, device, weights_info["fingerprint"],
                                               int((cfg.get("logger") or {}).get("sqnr_images", 16)))
    out["metrics"] = {
        "top1": q["top1"], "top5": q["top5"], "fp_top1": fp["top1"], "fp_top5": fp["top5"],
        "drop_top1": fp["top1"] - q["top1"],
    }
    if "agree_fp_top1" in q:
        out["metrics"]["agree_fp_top1"] = q["agree_fp_top1"]
    hits_src = q if "logits" in q else fp  # method=fp: the FP evaluation is the result
    out[PER_IMAGE_KEY] = per_image_field(hits_src["logits"], hits_src["labels"], out["data"]["eval_ids_sha"])
    out["cache"] = {"dir": str(cache.root), "enabled": cache.enabled, **cache.stats.as_dict()}
    return out


def _print_summary(rec: dict[str, Any], path: Path) -> None:
    m, c = rec["metrics"], rec["config"]
    t = rec["timings"]
    if c["task"]["name"] == "detection":
        from ptqbench.tasks.detection import summary_line

        log.info("%s %s %s calib=%s seed=%s | %s | %s", c["model"]["name"], c["method"]["name"], rec["bits"]["name"],
                 c["calib"]["size"], c["calib"]["seed"], summary_line(rec), path)
        return
    log.info(
        "%s %s %s calib=%s seed=%s | FP top-1 %.2f | quantized top-1 %.2f top-5 %.2f | drop %.2f | "
        "calibration %.1f s, evaluation %.1f s | %s",
        c["model"]["name"], c["method"]["name"],
        rec["bits"]["name"] + (f" full{rec['protocol']['full_bits']}" if rec.get("protocol", {}).get("full") else ""),
        c["calib"]["size"], c["calib"]["seed"],
        m["fp_top1"], m["top1"], m["top5"], m["drop_top1"], t["calibration_s"], t["eval_s"], path,
    )
