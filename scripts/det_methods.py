"""Every method on a random Mask R-CNN Swin-T: distance to the FP detector, time and peak memory.

The measurement behind docs/detection.md ("Methods on detectors"). A random Mask R-CNN Swin-T
(seed 0, score_thr 0) is quantized by each method on `--calib` coco-tiny train2017 images at
`--scale` (keep ratio), with the iteration knobs small (reconstruction 2 iterations per unit,
PTQ4ViT 2 candidates x 1 round, ERQ 10 refinement steps), through `ptqbench.pipeline.quantize`,
the function a job's calibration phase runs (its PhaseMeter gives the wall time and the peak
resident memory). The distance is `ptqbench.tasks.detection_outputs.distances` on two val2017
images: worst SQNR (dB) per part: FPN levels, RPN maps, RoI box head and mask head on the FP
detector's top proposals.

    python scripts/det_methods.py                       # every method, W8A8 and W4A4
    python scripts/det_methods.py repq,erq w4a4         # a subset

Needs the det extra and coco-tiny ($PTQBENCH_DATA/coco-tiny).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from mmengine.dataset import pseudo_collate

from ptqbench.data.coco import build_dataset, calibration_batch, coco_dataset_cfg, test_pipeline
from ptqbench.methods import Bits, build_method
from ptqbench.models.detectors import build_detector, detector_entry, load_config, set_test_cfg
from ptqbench.paths import data_root
from ptqbench.pipeline import quantize
from ptqbench.tasks.detection import DetectorForward, check_calibrated
from ptqbench.tasks.detection_outputs import distances, fixed_rois, part_outputs

SCALE = (256, 160)
CALIB = 2
# the iteration knobs of each method kept small (CPU); everything else is the method's default
SMALL: dict[str, dict[str, Any]] = {
    "minmax": {}, "percentile": {}, "repq": {}, "tsptq": {"search_candidates": 8, "search_rounds": 1}, "gptq": {},
    "erq": {"refine_steps": 10},
    "ptq4vit": {"search_candidates": 8, "search_rounds": 1},
    "dopq": {"iters": 2, "batch_size": 2, "progress": False},
    "aiq": {"iters": 2, "batch_size": 2, "progress": False},
}


def main(names: list[str], bits_list: list[Bits]) -> None:
    root = data_root() / "coco-tiny"
    cfg = load_config(detector_entry("mask_rcnn_swin_t"))
    set_test_cfg(cfg, 0.0, 20)
    fp = build_detector("mask_rcnn_swin_t", cfg, None, False, False, 0)[0]
    pipe = test_pipeline(cfg, SCALE, annotations=False)
    calib, ids = calibration_batch(root, "train2017", pipe, CALIB, 0)
    val = build_dataset(coco_dataset_cfg(root, "val2017", pipe))
    batch = pseudo_collate([val[0], val[1]])
    rois = fixed_rois(fp, batch, per_image=50)
    ref = part_outputs(fp, batch, rois)
    print(f"calibration: train2017 ids {ids}; probe: val2017 ids {[int(s.img_id) for s in batch['data_samples']]}; "
          f"scale {SCALE}, {rois.shape[0]} fixed RoIs; threads {torch.get_num_threads()}", flush=True)
    print("| method | bits | FPN | RPN | RoI box | RoI mask | quantize s | peak RSS MB (added) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for bits in bits_list:
            det = copy.deepcopy(fp)
            method = build_method({"name": name, **SMALL[name]}, bits)
            qm, stats, meter = quantize(method, DetectorForward(det), calib, torch.device("cpu"))
            check_calibrated(qm.model)
            d = distances(part_outputs(det, batch, rois), ref)
            added = meter.peak_rss_mb - meter.start_rss_mb
            print(f"| {name} | {bits.name} | {d['fpn']:.1f} | {d['rpn']:.1f} | {d['roi_box']:.1f} | {d['roi_mask']:.1f} "
                  f"| {meter.seconds:.1f} | {meter.peak_rss_mb:.0f} ({added:+.0f}) |", flush=True)
            del det, qm


if __name__ == "__main__":
    args = sys.argv[1:]
    names = args[0].split(",") if args else list(SMALL)
    bits = [Bits(int(b[1]), int(b[3])) for b in args[1].split(",")] if len(args) > 1 else [Bits(8, 8), Bits(4, 4)]
    unknown = sorted(set(names) - set(SMALL))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(SMALL)}")
    main(names, bits)
