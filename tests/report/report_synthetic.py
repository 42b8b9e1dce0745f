"""Synthetic run records with per-image results, for the report's tests and for rendering the
7-model ERQ-layout table without seven models' weights (the shared data has DeiT-T only).

Each model has a latent difficulty per image (uniform in [0, 1]); a run gets an image right when
difficulty + run noise < its accuracy, so methods are paired through the images as real runs are
(a better method mostly gets the same images right, plus some), and calibration seeds differ a
little through the noise. The numbers are made up; only their structure is realistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptqbench.per_image import encode_hits
from ptqbench.records import run_key, semantic_config

ERQ_MODELS = ["vit_small", "vit_base", "deit_tiny", "deit_small", "deit_base", "swin_small", "swin_base"]
# FP top-1 per model (the ERQ paper's, on the full set) and an accuracy (%) per (method, w, a).
FP = {"vit_small": 81.39, "vit_base": 84.54, "deit_tiny": 72.21, "deit_small": 79.85, "deit_base": 81.80,
      "swin_small": 83.23, "swin_base": 85.27}
DROPS = {("repq", 3, 4): 40.0, ("gptq", 3, 4): 30.0, ("erq", 3, 4): 14.0,
         ("repq", 4, 4): 10.0, ("gptq", 4, 4): 9.9, ("erq", 4, 4): 5.0}


def per_image_block(hits: np.ndarray, sha: str = "ids-sha") -> dict[str, Any]:
    """A record's `per_image` block for the given top-1 hits (top-5 taken equal: not tested here)."""
    return {"version": 1, "images": int(hits.size), "eval_ids_sha": sha, "top1": encode_hits(hits),
            "top5": encode_hits(hits)}


def synthetic_record(model: str, method: str, w: int, a: int, hits: np.ndarray, fp_top1: float, *,
                     calib_seed: int = 0, commit: str = "abc1234", torch_version: str = "2.13.0",
                     per_image: bool = True) -> dict[str, Any]:
    cfg = {"seed": 0, "model": {"name": model, "pretrained": True}, "method": {"name": method},
           "bits": {"w": w, "a": a}, "calib": {"size": 32, "seed": calib_seed, "split": "train"},
           "data": {"root": None, "eval_limit": None, "val_split": "val"}, "task": {"name": "classification"}}
    top1 = 100.0 * float(hits.mean())
    rec = {"run_key": run_key(cfg), "status": "ok", "group": "synthetic", "config": cfg,
           "semantic_config": semantic_config(cfg), "data": {"eval_images": int(hits.size)},
           "metrics": {"top1": top1, "top5": top1, "fp_top1": fp_top1, "fp_top5": fp_top1},
           "git_commit": commit, "versions": {"ptqbench": "0.1.0", "torch": torch_version, "timm": "1.0"},
           "finished_at": "2026-12-01T12:00:00+00:00", "host": "synthetic",
           "timings": {"calibration_s": 10.0, "eval_s": 5.0},
           "memory": {"calibration": {"seconds": 10.0, "peak_rss_mb": 1000.0},
                      "evaluation": {"seconds": 5.0, "peak_rss_mb": 900.0}}}
    if per_image:
        rec["per_image"] = per_image_block(hits)
    return rec


def erq_records(images: int = 1300, seeds: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """FP and RepQ-ViT / GPTQ / ERQ at W3A4 and W4A4 on the seven ERQ models, `seeds` calibration
    draws each (mean ± std cells), every record with per-image hits over the same images."""
    rng = np.random.default_rng(seed)
    recs = []
    for model in ERQ_MODELS:
        difficulty = rng.random(images)
        fp_hits = difficulty < FP[model] / 100
        fp = 100.0 * float(fp_hits.mean())
        recs.append(synthetic_record(model, "fp", 32, 32, fp_hits, fp))
        for (method, w, a), drop in DROPS.items():
            for s in range(seeds):
                noise = rng.normal(0.0, 0.03, images)
                hits = difficulty + noise < (FP[model] - drop) / 100
                recs.append(synthetic_record(model, method, w, a, hits, fp, calib_seed=s))
    return recs
