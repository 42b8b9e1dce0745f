"""COCO detection and instance segmentation through mmdet: one job of `task=detection`.

The flow is the classification job's: build the model (an mmdet detector), patch it with the one
adapter, let the method calibrate it on `calib.size` COCO *train* images, evaluate FP and
quantized with mmengine's `Runner.test` and mmdet's CocoMetric (bbox and segm), and return the
record fields. Metrics are recorded under mmdet's names (`coco/bbox_mAP`, `coco/bbox_mAP_50`,
`coco/bbox_mAP_75`, `coco/segm_mAP`, ...) and the FP baseline under `fp_<name>`, which is what
the report reads.

What is quantized (`task.quantize`): `all` is RepQ-ViT's protocol (every Conv2d and Linear of the
detector: backbone, FPN, RPN, RoI box and mask heads; the mask head's ConvTranspose2d stays FP,
as in RepQ-ViT's code, which quantizes nn.Conv2d and nn.Linear only); `backbone` patches the Swin
backbone only. Methods that work block by block refuse: see `refuse_blockwise`.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ptqbench.errors import CalibrationError, ConfigError
from ptqbench.quant.calibration import quantizers

SCOPES = {"all": None, "backbone": "detector.backbone"}
# mmdet's CocoMetric keys the record keeps (fractions in [0, 1], -1 where COCO has no instances).
METRIC_KEYS = tuple(f"coco/{kind}_mAP{sfx}" for kind in ("bbox", "segm") for sfx in ("", "_50", "_75", "_s", "_m", "_l"))
METRIC_NAME = "PTQBenchCocoMetric"


class DetectorForward(nn.Module):
    """Calls `detector.test_step(batch)`, so a calibration pass (`model(batch)`) runs the detector's
    real inference path: preprocessing, backbone, FPN, RPN proposals, RoI box and mask heads."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, batch: dict[str, Any]) -> list[Any]:
        return self.detector.test_step(batch)


def _register_metric() -> None:
    """CocoMetric scored on the images that were evaluated: with `data.eval_limit` only a subset of
    the annotation file is run, and the stock metric would count every other image as missed."""
    from mmdet.evaluation.metrics import CocoMetric
    from mmdet.registry import METRICS

    if METRIC_NAME in METRICS.module_dict:
        return

    class PTQBenchCocoMetric(CocoMetric):
        def compute_metrics(self, results: list) -> dict[str, float]:
            self.img_ids = sorted({int(r[1]["img_id"]) for r in results})
            return super().compute_metrics(results)

    METRICS.register_module(name=METRIC_NAME, module=PTQBenchCocoMetric)


def evaluator_cfg(ann_file: Path) -> dict[str, Any]:
    """The test evaluator every detection job (and the ground-truth test) uses."""
    _register_metric()
    return dict(type=METRIC_NAME, ann_file=str(ann_file), metric=["bbox", "segm"], format_only=False, backend_args=None)


def refuse_blockwise(method: Any) -> None:
    """Methods that walk `model_units(model)` (ERQ, GPTQ, AIQViT; DopQ-ViT with reconstruction,
    PTQ4ViT with its Hessian search) stream the calibration set block by block, each block fed a
    tensor from the previous one. A detector has no such chain (the Swin backbone passes
    (tokens, hw_shape) pairs and feeds four FPN levels; the RoI heads depend on proposals), and
    ptqbench has no unit list for it, so these methods stop here instead of running half a method."""
    if getattr(method, "blockwise", False):
        raise ConfigError(
            f"method={method.name} cannot run on task=detection with these options: it works block by block over "
            "model_units(), and ptqbench has no block list for mmdet detectors (the Swin backbone passes "
            "(tokens, hw_shape) pairs into four FPN levels; the RoI heads depend on the proposals). "
            "On detectors use method=fp, minmax, percentile, repq or tsptq, dopq with method.reconstruct=false, "
            "or ptq4vit with method.search_rounds=0"
        )


def _release_log_files(logger: logging.Logger) -> None:
    """Close and detach the log-file handlers a Runner gave its logger.

    The Runner's logger stays mmengine's *current* logger after the Runner is gone, and its file
    lives in the job's temporary folder, which is deleted after the evaluation: the next detector
    build in the same process (the next job of a sweep) would write into that file (mmengine's
    `init_weights` does) and fail."""
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()


@torch.no_grad()
def evaluate(detector: nn.Module, dataset_cfg: dict[str, Any], ann_file: Path, batch_size: int, workers: int,
             work_dir: Path) -> dict[str, Any]:
    """COCO metrics of `detector` over `dataset_cfg` through mmengine's Runner.test, with wall time."""
    from mmengine.runner import Runner

    work_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(
        model=detector, work_dir=str(work_dir), experiment_name=f"ptqbench-{uuid.uuid4().hex[:12]}",
        test_dataloader=dict(batch_size=batch_size, num_workers=workers, persistent_workers=False, drop_last=False,
                             sampler=dict(type="DefaultSampler", shuffle=False), dataset=dataset_cfg),
        test_evaluator=evaluator_cfg(ann_file), test_cfg=dict(type="TestLoop"), default_scope="mmdet",
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl")),
        log_level="WARNING",
    )
    t0 = time.perf_counter()
    try:
        metrics = runner.test()
    finally:
        _release_log_files(runner.logger)
    seconds = time.perf_counter() - t0
    missing = [k for k in ("coco/bbox_mAP", "coco/segm_mAP") if k not in metrics]
    if missing:
        raise CalibrationError(
            f"COCO evaluation returned no {missing}: the detector produced no detections on these images "
            "(random or mismatched weights, or a too high task.score_thr); see the log above"
        )
    images = len(runner.test_dataloader.dataset)
    out = {k: float(metrics[k]) for k in METRIC_KEYS if k in metrics}
    out.update(images=images, eval_seconds=round(seconds, 3), seconds_per_image=round(seconds / max(images, 1), 4))
    return out


def check_calibrated(model: nn.Module) -> None:
    """Every enabled quantizer must have been calibrated: a head that never ran during calibration
    (no detections on the calibration images) would otherwise fail in the middle of evaluation."""
    missing = [n for n, q in quantizers(model).items() if q.enabled and not q.calibrated]
    if missing:
        raise CalibrationError(
            f"{len(missing)} quantizers saw no calibration data (first: {missing[:3]}): the calibration images "
            "gave no detections, so the mask head never ran. Raise calib.size, lower task.score_thr, or check "
            "the checkpoint"
        )


def execute(cfg: DictConfig, results_dir: Path) -> dict[str, Any]:
    """The work of one detection job; returns the record fields it produces."""
    from ptqbench.data.coco import (
        build_dataset, calibration_batch, coco_dataset_cfg, resolve_coco_root, seeded_indices, split_paths, test_pipeline,
    )
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable, state_fingerprint
    from ptqbench.models.detectors import (
        build_detector, detector_entry, load_config, require_mmdet, resolve_checkpoint, set_test_cfg,
    )
    from ptqbench.profiling import PhaseMeter
    from ptqbench.cache import cache_from_config, code_version
    from ptqbench.run import cached_fp_baseline, resolve_workers, sha_of

    require_mmdet()
    if cfg.data.name != "coco":
        raise ConfigError(f"task=detection evaluates on COCO, but data={cfg.data.name}; drop the data override (data=coco)")
    scope_name = str(cfg.task.quantize)
    if scope_name not in SCOPES:
        raise ConfigError(f"task.quantize={scope_name!r}; choose one of {sorted(SCOPES)}")
    splits = dict(cfg.data.splits)
    for key in ("calib.split", "data.val_split"):
        val = OmegaConf.select(cfg, key)
        if val not in splits:
            raise ConfigError(f"{key}={val!r}; choose one of {sorted(splits)} (data.splits)")
    if cfg.calib.split == cfg.data.val_split:
        raise ConfigError(f"calib.split={cfg.calib.split!r} is the evaluation split: calibrate on training images")
    if cfg.get("quant") is not None and cfg.quant.get("full"):
        # the fully quantized roles (LayerNorm inputs, residual adds, softmax, GELU) are patched on
        # timm blocks only; mmdet's Swin blocks and the detector heads have no such patch yet
        raise ConfigError("quant.full=true is not available for task=detection (only timm classifiers get the "
                          "fully quantized roles); use quant.full=false")
    bits = Bits(int(cfg.bits.w), int(cfg.bits.a))
    method = build_method(OmegaConf.to_container(cfg.method, resolve=True), bits)
    refuse_blockwise(method)
    entry = detector_entry(cfg.model.name)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))

    root = resolve_coco_root(cfg.data.coco_root)  # fail on missing data before building the model
    # and on a missing checkpoint (build_detector resolves it again, as cheaply)
    resolve_checkpoint(cfg.model.name, cfg.model.get("checkpoint"), bool(cfg.model.get("pretrained", True)),
                       cfg.model.get("weights_dir"))
    val_folder, calib_folder = splits[cfg.data.val_split], splits[cfg.calib.split]
    ann_file, _ = split_paths(root, val_folder)
    mm_cfg = load_config(entry)
    set_test_cfg(mm_cfg, cfg.task.score_thr, cfg.task.max_per_img)
    detector, weights_info = build_detector(cfg.model.name, mm_cfg, cfg.model.get("checkpoint"),
                                            bool(cfg.model.get("pretrained", True)), bool(cfg.model.get("unsafe_load", False)),
                                            int(cfg.seed), cfg.model.get("weights_dir"))
    from mmengine.device import get_device

    device = torch.device(get_device())  # where Runner.test puts the model; calibrate there too
    detector.to(device)
    weights_info["fingerprint"] = state_fingerprint(detector)

    pipeline = test_pipeline(mm_cfg, cfg.data.scale, annotations=True)
    full = build_dataset(coco_dataset_cfg(root, val_folder, pipeline))
    indices = seeded_indices(len(full), cfg.data.eval_limit, 0)
    eval_ds_cfg = coco_dataset_cfg(root, val_folder, pipeline, indices)
    eval_ids = [str(full.get_data_info(i)["img_id"]) for i in (indices if indices is not None else range(len(full)))]
    batch_size, workers = int(cfg.data.batch_size), resolve_workers(cfg.data.workers)
    work_dir = results_dir / "cache" / "mmdet"
    tag = f"{entry.config}|{mm_cfg.model.test_cfg.to_dict()}|{pipeline}"

    def run_eval() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(dir=_mk(work_dir)) as tmp:
            return evaluate(detector, eval_ds_cfg, ann_file, batch_size, workers, Path(tmp))

    fp_runs: list[bool] = []

    def run_fp_eval() -> dict[str, Any]:
        fp_runs.append(True)
        return run_eval()

    ann = Path(ann_file)
    ann_sig = f"{ann}|{ann.stat().st_size}|{ann.stat().st_mtime_ns}" if ann.exists() else str(ann)
    fp = cached_fp_baseline(cache_from_config(cfg, results_dir), run_fp_eval, weights_info["fingerprint"],
                            f"{ann_sig}|{sha_of(eval_ids)}", tag, required="coco/bbox_mAP",
                            code=code_version("models", "tasks", "data"), fmt="json")
    # a cached FP time was measured by an earlier job, under whatever load the machine had then
    fp_timing = "this_job" if fp_runs else "cache"
    out: dict[str, Any] = {
        "model": {"name": cfg.model.name, **weights_info},
        "data": {"root": str(root), "split": val_folder, "scale": list(cfg.data.scale), "eval_images": len(eval_ids),
                 "eval_ids_sha": sha_of(eval_ids)},
        "fp": {k: v for k, v in fp.items() if k != "cache_key"},
        "bits": {"w": bits.w, "a": bits.a, "name": bits.name},
        "device": str(device), "threads": torch.get_num_threads(),
    }
    plan = method.plan()
    if plan is None:  # method=fp: the quantized metrics are the FP baseline itself
        q = fp
        out.update(timings={"calibration_s": 0.0, "eval_s": fp["eval_seconds"],
                            "eval_s_per_image": fp["seconds_per_image"], "fp_eval_timed_in": fp_timing},
                   memory={}, quantized_modules={}, calibration={"size": 0, "ids": []}, method_stats={})
    else:
        calib_pipeline = test_pipeline(mm_cfg, cfg.data.scale, annotations=False)
        calib, calib_ids = calibration_batch(root, calib_folder, calib_pipeline, int(cfg.calib.size), int(cfg.calib.seed))
        qm = make_quantizable(DetectorForward(detector), plan, scope=SCOPES[scope_name])
        with PhaseMeter(device) as cal_meter:
            stats = method.quantize(qm, calib)
        check_calibrated(qm.model)
        with PhaseMeter(device) as eval_meter:
            q = run_eval()
        out.update(
            timings={"calibration_s": round(cal_meter.seconds, 3), "eval_s": round(eval_meter.seconds, 3),
                     "eval_s_per_image": q["seconds_per_image"], "fp_eval_s": fp["eval_seconds"],
                     "fp_eval_s_per_image": fp["seconds_per_image"], "fp_eval_timed_in": fp_timing},
            memory={"calibration": cal_meter.as_dict(), "evaluation": eval_meter.as_dict()},
            quantized_modules=qm.counts(), quantizers=qm.quantizer_map(),
            protocol={"quantize": scope_name, "patch_input_bits": getattr(method.config, "patch_input_bits", None)},
            calibration={"size": len(calib_ids), "seed": int(cfg.calib.seed), "split": calib_folder, "ids": calib_ids},
            method_stats=stats,
        )
    metrics = {k: q[k] for k in METRIC_KEYS if k in q}
    metrics.update({f"fp_{k}": fp[k] for k in METRIC_KEYS if k in fp})
    metrics["drop_bbox_mAP"] = fp["coco/bbox_mAP"] - q["coco/bbox_mAP"]
    metrics["drop_segm_mAP"] = fp["coco/segm_mAP"] - q["coco/segm_mAP"]
    out["metrics"] = metrics
    return out


def _mk(p: Path) -> str:
    p.mkdir(parents=True, exist_ok=True)
    return str(p)


def summary_line(rec: dict[str, Any]) -> Optional[str]:
    """One log line for a finished detection job."""
    m, t = rec["metrics"], rec["timings"]
    fp_time = ""
    if "fp_eval_s_per_image" in t:  # a quantized job: the FP time is only comparable if timed in this job
        where = {"this_job": ", timed in this job", "cache": ", cached from an earlier job"}.get(t.get("fp_eval_timed_in"), "")
        fp_time = f"; FP {t['fp_eval_s_per_image']:.2f} s/image{where}"
    return (f"FP box AP {100 * m['fp_coco/bbox_mAP']:.1f} mask AP {100 * m['fp_coco/segm_mAP']:.1f} | "
            f"quantized box AP {100 * m['coco/bbox_mAP']:.1f} mask AP {100 * m['coco/segm_mAP']:.1f} | "
            f"calibration {t['calibration_s']:.1f} s, evaluation {t['eval_s']:.1f} s "
            f"({t['eval_s_per_image']:.2f} s/image{fp_time})")
