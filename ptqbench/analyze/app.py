"""`python -m ptqbench.analyze`: quantize one model with one method, then run the sensitivity
analysis (ptqbench.analyze.sensitivity) and the per-layer SQNR, and write the table (Markdown,
CSV, JSON) and the figure to `analyze.out` (default `<results_dir>/analysis/<model>-<method>-<bits>-<granularity>`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ptqbench.analyze.plots import plot_sensitivity
from ptqbench.analyze.sensitivity import GRANULARITIES, MODES, analysis_units, sensitivity_table, table_markdown
from ptqbench.errors import ConfigError

log = logging.getLogger("ptqbench")

MAX_EVAL_IMAGES = 5000  # the analysis keeps the evaluation images in memory


@dataclass
class Analysis:
    frame: Any                 # the sensitivity table (ptqbench.analyze.sensitivity)
    layer_sqnr: Optional[dict[str, Any]]
    files: list[Path]
    seconds: float


def check_config(cfg: DictConfig) -> dict[str, Any]:
    """The `analyze` block, checked before any work starts."""
    a = OmegaConf.to_container(cfg.get("analyze") or {}, resolve=True)
    if a.get("granularity") not in GRANULARITIES:
        raise ConfigError(f"analyze.granularity={a.get('granularity')!r}; choose one of {', '.join(GRANULARITIES)}")
    modes = list(a.get("modes") or [])
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"analyze.modes={modes}; choose among {', '.join(MODES)}, e.g. analyze.modes=[only]")
    limit = cfg.data.get("eval_limit")
    if limit is None or int(limit) > MAX_EVAL_IMAGES:
        raise ConfigError(f"data.eval_limit={limit}: the analysis evaluates the model 2x per unit on images it keeps "
                          f"in memory; set data.eval_limit to at most {MAX_EVAL_IMAGES} (default 256)")
    if cfg.method.name == "fp":
        raise ConfigError("method=fp quantizes nothing: analyze a quantization method, e.g. method=repq")
    if cfg.task.name != "classification":
        raise ConfigError(f"task={cfg.task.name}: the analysis evaluates ImageNet top-1; use task=classification")
    n = a.get("sqnr_images", 16)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"analyze.sqnr_images={n!r}; use 0 (no per-layer SQNR) or a number of calibration images")
    a["modes"] = modes
    return a


def output_prefix(cfg: DictConfig, granularity: str) -> Path:
    out = (cfg.get("analyze") or {}).get("out")
    if out:
        return Path(str(out))
    return Path(cfg.results_dir) / "analysis" / f"{cfg.model.name}-{cfg.method.name}-w{cfg.bits.w}a{cfg.bits.a}-{granularity}"


def run_analysis(cfg: DictConfig) -> Analysis:
    """The whole analysis of the configured model, method and bits."""
    import timm.data

    from ptqbench.data import ImageNetFolder, calibration_batch, eval_subset, make_loader, resolve_root
    from ptqbench.models import create_model, make_quantizable, state_fingerprint
    from ptqbench.models.detectors import DETECTORS
    from ptqbench.analyze.sqnr import layer_sqnr_for_job
    from ptqbench.launch import configure_threads, resolve_workers
    from ptqbench.models import model_entry
    from ptqbench.pipeline import job_method
    from ptqbench.validate import resolve_device

    start = time.perf_counter()
    a = check_config(cfg)
    if cfg.model.name in DETECTORS:
        raise ConfigError(f"model={cfg.model.name} is a detector; the analysis runs on classification models")
    bits, method = job_method(cfg)
    device = resolve_device(str(cfg.device))
    configure_threads(cfg.get("threads"), None)
    torch.manual_seed(int(cfg.seed))
    entry = model_entry(cfg.model.name, cfg.model.get("arch"), cfg.model.get("tag"))
    root = resolve_root(cfg.data.root)
    model, _ = create_model(entry, cfg.model.get("checkpoint"), cfg.model.get("weights_dir"),
                            bool(cfg.model.get("pretrained", True)), bool(cfg.model.get("allow_download", True)))
    model.to(device).eval()
    fingerprint = state_fingerprint(model)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    val = eval_subset(ImageNetFolder(root, cfg.data.val_split, transform), int(cfg.data.eval_limit))
    batches, labels = [], []
    for images, lab in make_loader(val, int(cfg.data.batch_size), resolve_workers(cfg.data.workers)):
        batches.append(images.to(device))
        labels.append(lab)
    calib, _ = calibration_batch(ImageNetFolder(root, cfg.calib.split, transform), int(cfg.calib.size), int(cfg.calib.seed))
    qm = make_quantizable(model, method.plan())
    method.quantize(qm, calib.to(device))

    granularity = a["granularity"]
    layer_sqnr = layer_sqnr_for_job(cfg, qm, calib, device, fingerprint, int(a.get("sqnr_images", 16)))
    by_layer = {ly["layer"]: ly for ly in layer_sqnr["layers"]} if layer_sqnr and granularity == "layer" else None
    units = analysis_units(qm.model, granularity)
    log.info("sensitivity of %s %s %s: %d %s units x %s on %d images", cfg.model.name, cfg.method.name, bits.name,
             len(units), granularity, "/".join(a["modes"]), int(torch.cat(labels).numel()))
    frame = sensitivity_table(qm.model, batches, torch.cat(labels), units, a["modes"], by_layer)
    prefix = output_prefix(cfg, granularity)
    files = write_analysis(frame, layer_sqnr, prefix, cfg, granularity)
    seconds = time.perf_counter() - start
    log.info("analysis written to %s.{md,csv,json,png,pdf} in %.1f s:\n%s", prefix, seconds, files[0].read_text())
    return Analysis(frame, layer_sqnr, files, seconds)


def _title(cfg: DictConfig, granularity: str) -> str:
    return (f"{cfg.model.name} {cfg.method.name} W{cfg.bits.w}A{cfg.bits.a}: sensitivity per {granularity} "
            f"(calib {cfg.calib.size}, seed {cfg.calib.seed})")


def write_analysis(frame: Any, layer_sqnr: Optional[dict[str, Any]], prefix: Path, cfg: DictConfig,
                   granularity: str) -> list[Path]:
    """`<prefix>.md`, `.csv`, `.json` (table, attrs, per-layer SQNR, config), `.png`/`.pdf`."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    at = frame.attrs
    sq = "--" if at["quant_sqnr_db"] is None else f"{at['quant_sqnr_db']:.2f} dB"
    header = (f"## {_title(cfg, granularity)}\n\nFP top-1 {at['fp_top1']:.2f}, all quantized {at['quant_top1']:.2f} "
              f"(logits SQNR {sq}) on {at['images']} images. `only_*`: this {granularity} quantized, the rest FP; "
              f"`all_but_*`: everything quantized except this {granularity}; `*_sqnr_db`: SQNR of the logits against FP"
              + ("; `layer_sqnr_db` / `local_sqnr_db`: the layer's output against FP with everything quantized "
                 "(accumulated) and with only its own quantizers (local), on calibration images." if "layer_sqnr_db" in frame else "."))
    files = [Path(f"{prefix}.md"), Path(f"{prefix}.csv"), Path(f"{prefix}.json")]
    files[0].write_text(table_markdown(frame, header))
    frame.to_csv(files[1], index=False)
    payload = {"attrs": dict(at), "rows": frame.astype(object).where(frame.notna(), None).to_dict("records"),
               "layer_sqnr": layer_sqnr, "config": OmegaConf.to_container(cfg, resolve=True)}
    files[2].write_text(json.dumps(payload, indent=1, default=str))
    files += plot_sensitivity(frame, prefix, _title(cfg, granularity))
    return files
