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
from ptqbench.config import JobSettings
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


def check_config(cfg: DictConfig) -> tuple[dict[str, Any], JobSettings]:
    """The `analyze` block and the job's typed settings (the rest of `cfg`, validated as a job's),
    checked before any work starts."""
    from ptqbench.validate import validate_config

    settings = validate_config(cfg, own=("analyze",))
    a = OmegaConf.to_container(cfg.get("analyze") or {}, resolve=True)
    if a.get("granularity") not in GRANULARITIES:
        raise ConfigError(f"analyze.granularity={a.get('granularity')!r}; choose one of {', '.join(GRANULARITIES)}")
    modes = list(a.get("modes") or [])
    if not modes or any(m not in MODES for m in modes):
        raise ConfigError(f"analyze.modes={modes}; choose among {', '.join(MODES)}, e.g. analyze.modes=[only]")
    limit = settings.data.eval_limit
    if limit is None or limit > MAX_EVAL_IMAGES:
        raise ConfigError(f"data.eval_limit={limit}: the analysis evaluates the model 2x per unit on images it keeps "
                          f"in memory; set data.eval_limit to at most {MAX_EVAL_IMAGES} (default 256)")
    if settings.method_name == "fp":
        raise ConfigError("method=fp quantizes nothing: analyze a quantization method, e.g. method=repq")
    if settings.task.name != "classification":
        raise ConfigError(f"task={settings.task.name}: the analysis evaluates ImageNet top-1; use task=classification")
    n = a.get("sqnr_images", 16)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"analyze.sqnr_images={n!r}; use 0 (no per-layer SQNR) or a number of calibration images")
    a["modes"] = modes
    return a, settings


def output_prefix(a: dict[str, Any], settings: JobSettings, granularity: str) -> Path:
    """`analyze.out`, else `<results_dir>/analysis/<model>-<method>-<bits>-<granularity>`."""
    if a.get("out"):
        return Path(str(a["out"]))
    s = settings
    return Path(s.run.results_dir) / "analysis" / f"{s.model.name}-{s.method_name}-w{s.bits.w}a{s.bits.a}-{granularity}"


def run_analysis(cfg: DictConfig) -> Analysis:
    """The whole analysis of the configured model, method and bits."""
    import timm.data

    from ptqbench.analyze.sqnr import layer_sqnr_for_job
    from ptqbench.data import ImageNetFolder, calibration_batch, eval_subset, make_loader, resolve_root
    from ptqbench.launch import configure_threads, resolve_workers
    from ptqbench.models import make_quantizable, state_fingerprint
    from ptqbench.models.detectors import DETECTORS
    from ptqbench.pipeline import job_method
    from ptqbench.tasks.classification import create_timm_model
    from ptqbench.validate import resolve_device

    start = time.perf_counter()
    a, s = check_config(cfg)
    if s.model.name in DETECTORS:
        raise ConfigError(f"model={s.model.name} is a detector; the analysis runs on classification models")
    bits, method = job_method(s)
    device = resolve_device(s.run.device)
    configure_threads(s.run.threads, None)
    torch.manual_seed(s.run.seed)
    root = resolve_root(s.data.root)
    model, _ = create_timm_model(s.model)
    model.to(device).eval()
    fingerprint = state_fingerprint(model)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    val = eval_subset(ImageNetFolder(root, s.data.val_split, transform), s.data.eval_limit)
    batches, labels = [], []
    for images, lab in make_loader(val, s.data.batch_size, resolve_workers(s.data.workers)):
        batches.append(images.to(device))
        labels.append(lab)
    calib, _ = calibration_batch(ImageNetFolder(root, s.calib.split, transform), s.calib.size, s.calib.seed)
    qm = make_quantizable(model, method.plan())
    method.quantize(qm, calib.to(device))

    granularity = a["granularity"]
    layer_sqnr = layer_sqnr_for_job(s, qm, calib, device, fingerprint, int(a.get("sqnr_images", 16)))
    by_layer = {ly["layer"]: ly for ly in layer_sqnr["layers"]} if layer_sqnr and granularity == "layer" else None
    units = analysis_units(qm.model, granularity)
    log.info("sensitivity of %s %s %s: %d %s units x %s on %d images", s.model.name, s.method_name, bits.name,
             len(units), granularity, "/".join(a["modes"]), int(torch.cat(labels).numel()))
    frame = sensitivity_table(qm.model, batches, torch.cat(labels), units, a["modes"], by_layer)
    prefix = output_prefix(a, s, granularity)
    files = write_analysis(frame, layer_sqnr, prefix, _title(s, granularity), OmegaConf.to_container(cfg, resolve=True),
                           granularity)
    seconds = time.perf_counter() - start
    log.info("analysis written to %s.{md,csv,json,png,pdf} in %.1f s:\n%s", prefix, seconds, files[0].read_text())
    return Analysis(frame, layer_sqnr, files, seconds)


def _title(s: JobSettings, granularity: str) -> str:
    return (f"{s.model.name} {s.method_name} W{s.bits.w}A{s.bits.a}: sensitivity per {granularity} "
            f"(calib {s.calib.size}, seed {s.calib.seed})")


def write_analysis(frame: Any, layer_sqnr: Optional[dict[str, Any]], prefix: Path, title: str, config: dict[str, Any],
                   granularity: str) -> list[Path]:
    """`<prefix>.md`, `.csv`, `.json` (table, attrs, per-layer SQNR, the resolved `config`), `.png`/`.pdf`."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    at = frame.attrs
    sq = "--" if at["quant_sqnr_db"] is None else f"{at['quant_sqnr_db']:.2f} dB"
    header = (f"## {title}\n\nFP top-1 {at['fp_top1']:.2f}, all quantized {at['quant_top1']:.2f} "
              f"(logits SQNR {sq}) on {at['images']} images. `only_*`: this {granularity} quantized, the rest FP; "
              f"`all_but_*`: everything quantized except this {granularity}; `*_sqnr_db`: SQNR of the logits against FP"
              + ("; `layer_sqnr_db` / `local_sqnr_db`: the layer's output against FP with everything quantized "
                 "(accumulated) and with only its own quantizers (local), on calibration images." if "layer_sqnr_db" in frame else "."))
    files = [Path(f"{prefix}.md"), Path(f"{prefix}.csv"), Path(f"{prefix}.json")]
    files[0].write_text(table_markdown(frame, header))
    frame.to_csv(files[1], index=False)
    payload = {"attrs": dict(at), "rows": frame.astype(object).where(frame.notna(), None).to_dict("records"),
               "layer_sqnr": layer_sqnr, "config": config}
    files[2].write_text(json.dumps(payload, indent=1, default=str))
    files += plot_sensitivity(frame, prefix, title)
    return files
