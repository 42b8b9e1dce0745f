"""Evaluation overhead of a quantized detector, per part, against the FP detector in one process.

`python -m ptqbench.bench --parts det_eval` runs `det_eval` in a fresh process: a random (or
local-checkpoint) mmdet detector, FP and quantized by the method, each forward timed per part
(backbone, FPN neck, RPN with its proposal decoding and NMS, RoI box head, RoI mask head, and the
rest of `test_step`: preprocessing, padding, result packing). The FP and quantized forwards
alternate over the same val2017 images (batch 1), so a load spike on a shared machine hits both
sides; each part is the best of `repeats` per image, summed over the images. With `top_ops` > 0,
one more forward per side runs under torch.profiler and the ops with the largest self CPU time
are listed, FP beside quantized.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

# (part name, attribute path on the detector, method name) in forward order
PARTS: tuple[tuple[str, str, str], ...] = (
    ("backbone", "backbone", "forward"),
    ("neck", "neck", "forward"),
    ("rpn", "rpn_head", "predict"),
    ("roi_bbox", "roi_head", "predict_bbox"),
    ("roi_mask", "roi_head", "predict_mask"),
)


@contextmanager
def part_timers(detector: nn.Module, sink: dict[str, float]) -> Iterator[None]:
    """Adds the wall time of each part's call into `sink[part]` while active (an instance
    attribute shadows the bound method; removed on exit)."""
    patched: list[tuple[Any, str]] = []

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sink[name] += time.perf_counter() - t0
            return out
        return run

    try:
        for name, attr, meth in PARTS:
            owner = getattr(detector, attr, None)
            if owner is None or not hasattr(owner, meth):
                continue
            setattr(owner, meth, timed(name, getattr(owner, meth)))
            patched.append((owner, meth))
        yield
    finally:
        for owner, meth in patched:
            owner.__dict__.pop(meth, None)


def _timed_forward(detector: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
    """Seconds per part of one `test_step`, with "other" the rest and "total" the whole call."""
    sink: dict[str, float] = defaultdict(float)
    with part_timers(detector, sink):
        t0 = time.perf_counter()
        detector.test_step(batch)
        total = time.perf_counter() - t0
    times = {name: sink.get(name, 0.0) for name, _, _ in PARTS}
    times["other"] = total - sum(times.values())
    times["total"] = total
    return times


def _top_ops(detector: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
    """Self CPU milliseconds per op name over one profiled `test_step`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        detector.test_step(batch)
    return {e.key: e.self_cpu_time_total / 1000.0 for e in prof.key_averages()}


@torch.no_grad()
def det_eval(model: str, method: str, bits: str, images: int, repeats: int, calib: int, calib_scale: list[int],
             scale: list[int], score_thr: float, max_per_img: int, options: dict[str, Any] | None = None,
             top_ops: int = 0) -> dict[str, Any]:
    """Per-part forward milliseconds of the FP and the quantized detector (see the module doc).

    Calibration runs at `calib_scale` (the quantizers' parameters do not depend on the image size;
    a full-scale calibration costs minutes on CPU and times nothing here); evaluation at `scale`.
    `score_thr` 0 keeps `max_per_img` detections per image, as a trained detector does, so the RoI
    mask head sees as many boxes as in a real evaluation."""
    from mmengine.dataset import pseudo_collate

    from ptqbench.data.coco import build_dataset, calibration_batch, coco_dataset_cfg, seeded_indices, test_pipeline
    from ptqbench.methods import Bits, build_method
    from ptqbench.errors import WeightsError
    from ptqbench.models.detectors import build_detector, detector_entry, load_config, resolve_checkpoint, set_test_cfg
    from ptqbench.paths import data_root
    from ptqbench.pipeline import quantize
    from ptqbench.tasks.detection import DetectorForward

    root = data_root() / "coco-tiny"
    if not (root / "val2017").is_dir():
        raise FileNotFoundError(f"{root}/val2017 not found: the det_eval part needs coco-tiny under $PTQBENCH_DATA")
    cfg = load_config(detector_entry(model))
    set_test_cfg(cfg, score_thr, max_per_img)
    try:
        resolve_checkpoint(model, None, True)
        pretrained = True
    except WeightsError:  # no local checkpoint: random weights (speed does not depend on the values)
        pretrained = False
    fp, info = build_detector(model, cfg, None, pretrained, False, 0)
    weights = "checkpoint" if info.get("source") == "checkpoint" else "random"
    calib_batch, _ = calibration_batch(root, "train2017", test_pipeline(cfg, calib_scale, annotations=False), calib, 0)
    val = build_dataset(coco_dataset_cfg(root, "val2017", test_pipeline(cfg, scale, annotations=False)))
    picked = seeded_indices(len(val), images, 0) or list(range(len(val)))
    batches = [pseudo_collate([val[i]]) for i in picked]

    w, a = (int(v) for v in bits[1:].split("a"))
    qdet = copy.deepcopy(fp)
    t0 = time.perf_counter()
    quantize(build_method({"name": method, **(options or {})}, Bits(w, a)), DetectorForward(qdet), calib_batch,
             torch.device("cpu"))
    quantize_s = time.perf_counter() - t0
    sides = {"fp": fp, "q": qdet}
    for b in batches:  # warm-up: allocator, weight fake-quant caches
        for det in sides.values():
            det.test_step(b)
    best: dict[str, list[dict[str, float]]] = {s: [{} for _ in batches] for s in sides}
    for _ in range(repeats):
        for i, b in enumerate(batches):
            for side, det in sides.items():
                t = _timed_forward(det, b)
                best[side][i] = {k: min(v, best[side][i].get(k, float("inf"))) for k, v in t.items()}
    parts = [p for p, _, _ in PARTS] + ["other", "total"]
    row: dict[str, Any] = {"model": model, "method": method, "bits": bits, "images": len(batches), "repeats": repeats,
                           "scale": "x".join(map(str, scale)), "weights": weights, "quantize_s": round(quantize_s, 1)}
    per_part = []
    for p in parts:
        fp_ms = 1000 * sum(t[p] for t in best["fp"]) / len(batches)
        q_ms = 1000 * sum(t[p] for t in best["q"]) / len(batches)
        per_part.append({"part": p, "fp_ms": round(fp_ms, 1), "q_ms": round(q_ms, 1),
                         "ratio": round(q_ms / fp_ms, 2) if fp_ms > 0 else None})
    row["parts"] = per_part
    row["ratio"] = per_part[-1]["ratio"]
    if top_ops > 0:
        ops = {side: _top_ops(det, batches[0]) for side, det in sides.items()}
        names = sorted(set(ops["fp"]) | set(ops["q"]), key=lambda k: -ops["q"].get(k, 0.0))[:top_ops]
        row["ops"] = [{"op": n, "fp_ms": round(ops["fp"].get(n, 0.0), 1), "q_ms": round(ops["q"].get(n, 0.0), 1)}
                      for n in names]
    return row


def det_eval_part(args: Any, emit: Callable[[str], None], run_cell: Callable[..., dict[str, Any]],
                  table: Callable[[list[dict[str, Any]], list[str]], str],
                  method_options: Callable[[str, int], dict[str, Any]]) -> None:
    """The `det_eval` part of `python -m ptqbench.bench`: one fresh-process cell per model and
    method, each printed as a per-part table (and the top ops when asked)."""
    scale, cscale = "x".join(map(str, args.det_scale)), "x".join(map(str, args.det_calib_scale))
    emit(f"## Detector evaluation time per part, FP vs fake-quantized (batch 1, {args.det_images} coco-tiny val2017 "
         f"images at {scale}, best of {args.det_repeats} alternating forwards per image, ms per image; calibration on "
         f"{args.det_calib} train2017 image(s) at {cscale}; score_thr 0, 100 detections per image)\n")
    for model in [v for v in args.det_models.split(",") if v]:
        for m in [v for v in args.det_methods.split(",") if v]:
            row = run_cell("det_eval", args.threads, model=model, method=m, bits=args.det_bits, images=args.det_images,
                           repeats=args.det_repeats, calib=args.det_calib, calib_scale=args.det_calib_scale,
                           scale=args.det_scale, score_thr=0.0, max_per_img=100,
                           options=method_options(m, args.recon_iters), top_ops=args.det_top_ops)
            print({k: v for k, v in row.items() if k not in ("parts", "ops")}, flush=True)
            if "error" in row:
                emit(f"{model} {m}: failed: {row['error']}\n")
                continue
            emit(f"### {model}, {m} {row['bits']} ({row['weights']} weights; quantization took {row['quantize_s']} s)\n")
            emit(table(row["parts"], ["part", "fp_ms", "q_ms", "ratio"]) + "\n")
            if row.get("ops"):
                emit("Ops with the largest self CPU time in the quantized forward (one profiled forward per side, "
                     "first image), ms:\n")
                emit(table(row["ops"], ["op", "fp_ms", "q_ms"]) + "\n")
