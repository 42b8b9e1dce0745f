"""ImageNet classification: top-1 / top-5 of a (quantized) model over a loader."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from ptqbench.progress import progress


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "eval",
             keep_logits: bool = False) -> dict[str, Any]:
    """Top-1/top-5 accuracy in percent, the image count, and wall time (model + data loading);
    with `keep_logits`, also the logits and labels (CPU tensors, evaluation order): the FP
    baseline cache keeps them so later analyses (agreement, calibration error) need no FP rerun."""
    model.eval()
    correct1 = correct5 = n = 0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    start = time.perf_counter()
    model_s = 0.0
    for images, labels in progress(loader, desc=desc, unit="batch"):
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        t0 = time.perf_counter()
        logits = model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_s += time.perf_counter() - t0
        if keep_logits:
            kept.append((logits.float().cpu(), labels.cpu()))
        top5 = logits.topk(5, dim=1).indices
        hit = top5 == labels[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(dim=1).sum())
        n += labels.numel()
    if n == 0:
        raise ValueError("evaluation loader yielded no images")
    out: dict[str, Any] = {
        "top1": 100.0 * correct1 / n,
        "top5": 100.0 * correct5 / n,
        "images": n,
        "eval_seconds": time.perf_counter() - start,
        "model_seconds": model_s,
    }
    if keep_logits:
        out["logits"] = torch.cat([k[0] for k in kept])
        out["labels"] = torch.cat([k[1] for k in kept])
    return out
