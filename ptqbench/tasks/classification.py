"""ImageNet classification: top-1 / top-5 of a (quantized) timm model, as a `Task`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from ptqbench.config import JobSettings
from ptqbench.progress import progress
from ptqbench.tasks.base import BuiltModel, CalibData, EvalData, Task, register_task


@dataclass
class ImageNetData:
    """The ImageNet folders of a job (`calib` None: the method calibrates nothing)."""

    root: Path
    val: Any
    calib: Any


def create_timm_model(model: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The FP timm model the `model` settings (`ptqbench.config.TimmModelConfig`) name, and the
    record's weights fields: every classification job, the analysis and the SQNR reference build
    it through here."""
    from ptqbench.models import create_model, model_entry

    entry = model_entry(model.name, model.arch, model.tag)
    return create_model(entry, model.checkpoint, model.weights_dir, model.pretrained, model.allow_download)


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


@register_task
class Classification(Task):
    """ImageNet top-1/top-5 of a timm classifier (`data.root` folders, `model.name` from the zoo)."""

    name = "classification"
    headline = "top1"
    headline_label = "top-1"
    fp_format = "pt"  # the FP logits are kept: agreement and per-image hits need no FP rerun
    fp_required = "logits"
    fp_fields = ("top1", "top5", "images", "cached")

    def device(self, settings: JobSettings) -> torch.device:
        from ptqbench.validate import resolve_device

        return resolve_device(settings.run.device)

    def open_data(self, settings: JobSettings, method: Any) -> ImageNetData:
        from ptqbench.data import ImageNetFolder, calibration_indices, resolve_root

        root = resolve_root(settings.data.root)
        val = ImageNetFolder(root, settings.data.val_split)
        calib = ImageNetFolder(root, settings.calib.split) if method.plan() is not None else None
        if calib is not None:  # too few calibration images: refused before the weights load
            calibration_indices(calib, settings.calib.size, settings.calib.seed)
        return ImageNetData(root, val, calib)

    def build_model(self, settings: JobSettings, device: torch.device) -> BuiltModel:
        import timm.data

        from ptqbench.models import state_fingerprint

        model, weights = create_timm_model(settings.model)
        model.to(device)
        weights["fingerprint"] = state_fingerprint(model)
        data_cfg = timm.data.resolve_data_config({}, model=model)
        transform = timm.data.create_transform(**data_cfg)
        fields = {"name": settings.model.name, **weights, "data_config": {k: str(v) for k, v in data_cfg.items()}}
        return BuiltModel(model, device, weights["fingerprint"], fields, context=transform)

    def evaluation_data(self, settings: JobSettings, data: ImageNetData, model: BuiltModel, results_dir: Path) -> EvalData:
        import timm.data

        from ptqbench.cache import cache_from_config
        from ptqbench.data import eval_subset, files_signature, subset_ids
        from ptqbench.data.decoded import evaluation_loader
        from ptqbench.hashing import sha_of
        from ptqbench.launch import resolve_workers

        data.val.transform = model.context
        val = eval_subset(data.val, settings.data.eval_limit)
        signature = files_signature(val)
        loader, decoded = evaluation_loader(val, model.context, signature, cache_from_config(settings.effective, results_dir),
                                            settings.data.decoded_cache, settings.data.batch_size,
                                            resolve_workers(settings.data.workers))
        ids = subset_ids(val)
        fields = {"root": str(data.root), "eval_images": len(ids), "eval_ids_sha": sha_of(ids), "decoded_cache": decoded}
        input_size = tuple(timm.data.resolve_data_config({}, model=model.module)["input_size"])  # the warm-up's
        return EvalData(loader, ids, f"{data.root}|{settings.data.val_split}|{signature}", repr(model.context),
                        model.device, fields, context=input_size)

    def calibration_data(self, settings: JobSettings, data: ImageNetData, model: BuiltModel, cache: Any) -> CalibData:
        from ptqbench.data import calibration_batch, calibration_indices, files_signature
        from ptqbench.hashing import code_version, content_key

        ds = data.calib
        ds.transform = model.context
        size, seed, split = settings.calib.size, settings.calib.seed, settings.calib.split
        key = content_key("calib", str(data.root), split, size, seed, repr(model.context), code_version("data"),
                          files_signature(ds, calibration_indices(ds, size, seed)))
        hits = cache.stats.hits
        batch = cache.get_or_compute("calib", key, lambda: dict(zip(("images", "ids"), calibration_batch(ds, size, seed))),
                                     describe={"root": str(data.root), "split": split, "size": size, "seed": seed})
        return CalibData(batch["images"].to(model.device), list(batch["ids"]), seed, split,
                         cache_key=key, cached=cache.stats.hits > hits)

    def evaluate(self, module: nn.Module, data: EvalData, desc: str) -> dict[str, Any]:
        return evaluate(module, data.data, data.device, desc=desc, keep_logits=True)

    def warm_up(self, module: nn.Module, data: EvalData) -> None:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *data.context, device=data.device))

    def metrics(self, q: Optional[dict[str, Any]], fp: dict[str, Any]) -> dict[str, Any]:
        res = fp if q is None else q
        out = {"top1": res["top1"], "top5": res["top5"], "fp_top1": fp["top1"], "fp_top5": fp["top5"],
               "drop_top1": fp["top1"] - res["top1"]}
        if q is not None:
            out["agree_fp_top1"] = 100.0 * float((q["logits"].argmax(1) == fp["logits"].argmax(1)).float().mean())
        return out

    def diagnostics(self, settings: JobSettings, qm: Any, calib: CalibData, model: BuiltModel) -> dict[str, Any]:
        from ptqbench.analyze.sqnr import layer_sqnr_for_job

        images = settings.logger.sqnr_images if settings.logger is not None else 16
        return {"layer_sqnr": layer_sqnr_for_job(settings, qm, calib.inputs, model.device, model.fingerprint, images)}

    def extra_fields(self, q: Optional[dict[str, Any]], fp: dict[str, Any], data: EvalData) -> dict[str, Any]:
        from ptqbench.per_image import PER_IMAGE_KEY, per_image_field

        res = fp if q is None else q  # method=fp: the FP evaluation is the result
        return {PER_IMAGE_KEY: per_image_field(res["logits"], res["labels"], data.fields["eval_ids_sha"])}

    def summary_line(self, record: dict[str, Any]) -> str:
        m, t = record["metrics"], record["timings"]
        return (f"FP top-1 {m['fp_top1']:.2f} | quantized top-1 {m['top1']:.2f} top-5 {m['top5']:.2f} | "
                f"drop {m['drop_top1']:.2f} | calibration {t['calibration_s']:.1f} s, evaluation {t['eval_s']:.1f} s")
