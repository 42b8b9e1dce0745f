"""COCO detection and instance segmentation through mmdet: the `Task` of `task=detection`.

The pipeline (`ptqbench.pipeline`) builds the model (an mmdet detector), patches it with the one
adapter, lets the method calibrate it on `calib.size` COCO *train* images, and evaluates FP and
quantized with mmengine's `Runner.test` and mmdet's CocoMetric (bbox and segm). Metrics are recorded under mmdet's names (`coco/bbox_mAP`, `coco/bbox_mAP_50`,
`coco/bbox_mAP_75`, `coco/segm_mAP`, ...) and the FP baseline under `fp_<name>`, which is what
the report reads.

What is quantized (`task.quantize`): `all` is RepQ-ViT's protocol (every Conv2d and Linear of the
detector: backbone, FPN, RPN, RoI box and mask heads; the mask head's ConvTranspose2d stays FP,
as in RepQ-ViT's code, which quantizes nn.Conv2d and nn.Linear only); `backbone` patches the Swin
backbone only.

Every method runs on detectors. Block-wise methods (ERQ, GPTQ, DopQ-ViT and AIQViT reconstruction,
PTQ4ViT's search) walk the model family's units, which for an mmdet Swin detector are the backbone's
chain (ptqbench.models.families.mmdet_swin); the neck and the heads keep what the method's calibration
pass gave them (docs/detection.md, "Methods on detectors"). What still cannot run is refused in
`Detection.validate`, the one place.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ptqbench.config import JobSettings
from ptqbench.errors import CalibrationError, ConfigError
from ptqbench.quant.calibration import quantizers
from ptqbench.tasks.base import BuiltModel, CalibData, EvalData, Task, register_task

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


@dataclass
class CocoData:
    """The COCO folders of a job."""

    root: Path
    val_folder: str
    calib_folder: str


@register_task
class Detection(Task):
    """COCO box and mask AP of an mmdet detector (`model.name` from `models.detectors`)."""

    name = "detection"
    headline = "coco/bbox_mAP"
    headline_label = "box mAP"
    fp_format = "json"
    fp_required = "coco/bbox_mAP"

    def validate(self, settings: JobSettings, method: Any) -> None:
        # data, splits and the calibration split are checked for every task by ptqbench.validate
        scope = settings.task.quantize
        if scope not in SCOPES:
            raise ConfigError(f"task.quantize={scope}: choose one of {', '.join(sorted(SCOPES))}")
        if method.quant.full:
            # the fully quantized roles (LayerNorm inputs, residual adds, softmax, GELU) are patched on
            # timm blocks only; mmdet's Swin blocks and the detector heads have no such patch
            raise ConfigError("quant.full=true: the fully quantized roles exist for timm classifiers only; "
                              "use quant.full=false with task=detection")
        if getattr(method, "needs_logits", False):
            raise ConfigError(f"method={method.name}: its loss differentiates a classifier's logits, which a "
                              f"detector does not have; {method.logits_fix}")

    def scope(self, settings: JobSettings) -> Optional[str]:
        return SCOPES[settings.task.quantize]

    def device(self, settings: JobSettings) -> torch.device:
        from mmengine.device import get_device

        return torch.device(get_device())  # where Runner.test puts the model; calibrate there too

    def open_data(self, settings: JobSettings, method: Any) -> CocoData:
        from ptqbench.data.coco import resolve_coco_root
        from ptqbench.models.detectors import require_mmdet, resolve_checkpoint

        require_mmdet()
        root = resolve_coco_root(settings.data.coco_root)
        # a missing checkpoint fails here too, before the detector is built (build_detector
        # resolves it again, as cheaply)
        m = settings.model
        resolve_checkpoint(m.name, m.checkpoint, m.pretrained, m.weights_dir)
        splits = settings.data.splits
        return CocoData(root, splits[settings.data.val_split], splits[settings.calib.split])

    def build_model(self, settings: JobSettings, device: torch.device) -> BuiltModel:
        from ptqbench.models import state_fingerprint
        from ptqbench.models.detectors import build_detector, detector_entry, load_config, set_test_cfg
        from ptqbench.models.families import family_of

        m = settings.model
        mm_cfg = load_config(detector_entry(m.name))
        set_test_cfg(mm_cfg, settings.task.score_thr, settings.task.max_per_img)
        detector, weights = build_detector(m.name, mm_cfg, m.checkpoint, m.pretrained, m.unsafe_load,
                                           settings.run.seed, m.weights_dir)
        detector.to(device)
        weights["fingerprint"] = state_fingerprint(detector)
        # what ran, as the classification record names it: the architecture (the mmdet config's
        # name) and the model family that patches it
        arch = Path(detector_entry(m.name).config.removeprefix("mmdet::")).stem
        fields = {"name": m.name, **weights, "arch": arch, "family": family_of(detector).name}
        return BuiltModel(DetectorForward(detector), device, weights["fingerprint"], fields, context=mm_cfg)

    def evaluation_data(self, settings: JobSettings, data: CocoData, model: BuiltModel, results_dir: Path) -> EvalData:
        from ptqbench.data.coco import build_dataset, coco_dataset_cfg, seeded_indices, split_paths, test_pipeline
        from ptqbench.hashing import sha_of
        from ptqbench.launch import resolve_workers
        from ptqbench.models.detectors import detector_entry

        mm_cfg = model.context
        ann_file, _ = split_paths(data.root, data.val_folder)
        scale = list(settings.data.scale)
        pipeline = test_pipeline(mm_cfg, scale, annotations=True)
        full = build_dataset(coco_dataset_cfg(data.root, data.val_folder, pipeline))
        indices = seeded_indices(len(full), settings.data.eval_limit, 0)
        ids = [str(full.get_data_info(i)["img_id"]) for i in (indices if indices is not None else range(len(full)))]
        ann = Path(ann_file)
        ann_sig = f"{ann}|{ann.stat().st_size}|{ann.stat().st_mtime_ns}" if ann.exists() else str(ann)
        run = EvalRun(coco_dataset_cfg(data.root, data.val_folder, pipeline, indices), ann, settings.data.batch_size,
                      resolve_workers(settings.data.workers), results_dir / "cache" / "mmdet")
        fields = {"root": str(data.root), "split": data.val_folder, "scale": scale,
                  "eval_images": len(ids), "eval_ids_sha": sha_of(ids)}
        tag = f"{detector_entry(settings.model.name).config}|{mm_cfg.model.test_cfg.to_dict()}|{pipeline}"
        return EvalData(run, ids, f"{ann_sig}|{sha_of(ids)}", tag, model.device, fields)

    def calibration_data(self, settings: JobSettings, data: CocoData, model: BuiltModel, cache: Any) -> CalibData:
        from ptqbench.data.coco import calibration_batch, test_pipeline

        pipeline = test_pipeline(model.context, list(settings.data.scale), annotations=False)
        size, seed = settings.calib.size, settings.calib.seed
        batch, ids = calibration_batch(data.root, data.calib_folder, pipeline, size, seed)
        return CalibData(batch, ids, seed, data.calib_folder)

    def evaluate(self, module: nn.Module, data: EvalData, desc: str) -> dict[str, Any]:
        run: EvalRun = data.data
        detector = module.detector if isinstance(module, DetectorForward) else module
        run.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=run.work_dir) as tmp:
            return evaluate(detector, run.dataset_cfg, run.ann_file, run.batch_size, run.workers, Path(tmp))

    def check_quantized(self, qm: Any) -> None:
        check_calibrated(qm.model)

    def metrics(self, q: Optional[dict[str, Any]], fp: dict[str, Any]) -> dict[str, Any]:
        res = fp if q is None else q
        out = {k: res[k] for k in METRIC_KEYS if k in res}
        out.update({f"fp_{k}": fp[k] for k in METRIC_KEYS if k in fp})
        out["drop_bbox_mAP"] = fp["coco/bbox_mAP"] - res["coco/bbox_mAP"]
        out["drop_segm_mAP"] = fp["coco/segm_mAP"] - res["coco/segm_mAP"]
        return out

    def timings(self, q: Optional[dict[str, Any]], fp: dict[str, Any]) -> dict[str, Any]:
        # a cached FP time was measured by an earlier job, under whatever load the machine had then
        timed_in = "cache" if fp["cached"] else "this_job"
        if q is None:
            return {"eval_s_per_image": fp["seconds_per_image"], "fp_eval_timed_in": timed_in}
        return {"eval_s_per_image": q["seconds_per_image"], "fp_eval_s_per_image": fp["seconds_per_image"],
                "fp_eval_timed_in": timed_in}

    def protocol(self, settings: JobSettings) -> dict[str, Any]:
        return {"quantize": settings.task.quantize}

    def summary_line(self, record: dict[str, Any]) -> str:
        return summary_line(record)


@dataclass
class EvalRun:
    """What one `Runner.test` evaluation needs."""

    dataset_cfg: dict[str, Any]
    ann_file: Path
    batch_size: int
    workers: int
    work_dir: Path


def summary_line(rec: dict[str, Any]) -> str:
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
