"""The one source of truth for configuration: a dataclass per config block defines its options and
defaults; the YAML files in conf/ only override them.

`ptqbench.config_store.register_configs()` puts them in Hydra's ConfigStore, where the YAML options
pull them in. `effective_config` fills the defaults into any config (also one composed without
Hydra) and is what the run key hashes; `JobSettings` is its typed form, built once by
`ptqbench.validate.validate_config`. (The `report` block's schema is ReportSpec, in
ptqbench/report/spec.py; it is not part of a job's settings.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from omegaconf import DictConfig, OmegaConf

from ptqbench.paths import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"


# --- run-level schemas --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """Top-level keys of config.yaml (the blocks below are their own schemas)."""

    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda[:N]
    threads: Optional[int] = None       # torch intra-op threads (None: torch's default or the launcher's)
    results_dir: str = "${oc.env:PTQBENCH_RESULTS,results}"   # runs/ (records), cache/, logs/, wandb/
    resume: bool = True                 # skip jobs whose record says ok; false reruns them
    heap_reuse_mib: int = 32            # heap blocks kept for reuse while a method trains or searches
                                        # (ptqbench.heap.set_reuse_limit): lower = less memory, more time
    recon_spill: bool = True            # on CPU, reconstruction keeps its per-image activations in temporary
                                        # files (ptqbench.algorithms.row_store): memory flat in calib.size


@dataclass(frozen=True)
class CalibConfig:
    """Calibration images: a seeded draw from a training split."""

    size: int = 32                      # calibration images (RepQ-ViT/ERQ use 32)
    seed: int = 0                       # same seed, same images
    split: str = "train"                # never the evaluation split


@dataclass(frozen=True)
class BitsConfig:
    """Weight and activation bit-widths (conf/bits/wXaY.yaml set both)."""

    w: int
    a: int


@dataclass(frozen=True)
class TimmModelConfig:
    """A timm classifier (conf/model/<name>.yaml give name, arch and tag)."""

    name: str
    arch: Optional[str] = None          # timm architecture, e.g. deit_tiny_patch16_224
    tag: Optional[str] = None           # timm pretrained tag, e.g. fb_in1k
    checkpoint: Optional[str] = None    # explicit weights file (.safetensors/.pth); must match the model exactly
    weights_dir: Optional[str] = None   # extra local folder searched before $PTQBENCH_WEIGHTS and $PTQBENCH_DATA/weights
    pretrained: bool = True             # false: random weights (pipeline checks, timing)
    allow_download: bool = True         # fall back to timm's hub when no local file is found


@dataclass(frozen=True)
class DetectorModelConfig:
    """An mmdet detector with a Swin backbone (needs task=detection)."""

    name: str
    checkpoint: Optional[str] = None    # the detector's weights (.pth); None: <name>.pth in the weights folders
    weights_dir: Optional[str] = None   # extra local folder searched before $PTQBENCH_WEIGHTS and $PTQBENCH_DATA/weights
    pretrained: bool = True             # false: random weights (pipeline checks, timing)
    unsafe_load: bool = False           # true: full unpickle of a trusted mmdet checkpoint torch's safe loader refuses


@dataclass(frozen=True)
class ImageNetDataConfig:
    """ImageNet-style folders (train/ and val/ of class folders)."""

    name: str = "imagenet"
    root: Optional[str] = None          # ImageNet root with train/ and val/; None: $PTQBENCH_DATA/imagenet-mini
    val_split: str = "val"
    eval_limit: Optional[int] = None    # evaluate on a fixed seeded subset of this many images (quick runs)
    batch_size: int = 100
    workers: Union[int, str] = "auto"   # data-loader processes (auto: min(8, cores))
    decoded_cache: bool = True          # decode+resize+crop the evaluation images once into the cache (docs/cache.md); no effect on results


@dataclass(frozen=True)
class CocoDataConfig:
    """COCO detection data (annotations/instances_<split>.json and <split>/ images)."""

    name: str = "coco"
    coco_root: Optional[str] = None     # None: $PTQBENCH_DATA/coco-tiny
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train2017", "val": "val2017"})  # calib.split and val_split name one of these folders
    val_split: str = "val"
    scale: tuple[int, int] = (1333, 800)   # test Resize (long, short side limits, aspect kept), as in the mmdet configs
    eval_limit: Optional[int] = None    # evaluate on a fixed seeded subset of this many images (quick runs)
    batch_size: int = 1                 # images per test batch (mmdet's default for evaluation)
    workers: Union[int, str] = "auto"   # data-loader processes (auto: min(8, cores))


@dataclass(frozen=True)
class ClassificationTaskConfig:
    name: str = "classification"


@dataclass(frozen=True)
class DetectionTaskConfig:
    name: str = "detection"
    quantize: str = "all"               # all: every Conv2d and Linear of the detector (RepQ-ViT protocol); backbone: Swin backbone only
    score_thr: Optional[float] = None   # R-CNN test score threshold (None: the config's 0.05); 0 keeps max_per_img detections per image
    max_per_img: Optional[int] = None   # detections kept per image (None: the config's 100)


@dataclass(frozen=True)
class NoLoggerConfig:
    name: str = "none"
    sqnr_images: int = 16               # per-layer SQNR on this many calibration images, in the record (0: off)


@dataclass(frozen=True)
class WandbLoggerConfig:
    name: str = "wandb"
    mode: str = "offline"               # offline | online | disabled; offline runs: `wandb sync <dir>/wandb/offline-run-*`
    project: str = "ptqbench"
    entity: Optional[str] = None
    group: Optional[str] = None         # None: the experiment's table name (report.name), else sweep-<hash of the grid>, else single
    tags: tuple[str, ...] = ()          # added to each job's own tags (model, method, bits, task)
    dir: str = "${results_dir}"
    sqnr_images: int = 16               # per-layer SQNR on this many calibration images, in the record and as a Table (0: off)


@dataclass(frozen=True)
class CacheConfig:
    """The content-addressed cache shared by every job of a results folder (docs/sweeps.md). Its
    keys hash every input, so it is never stale; not part of the run key."""

    enabled: bool = True
    dir: Optional[str] = "${results_dir}/cache"
    max_gb: float = 20                  # least recently used entries are evicted beyond this
    fp_activations: bool = True         # cache the FP unit outputs block reconstruction trains against


@dataclass(frozen=True)
class EvalConfig:
    """How the quantized model's evaluation runs. `compile`: its forward goes through
    torch.compile (docs/benchmarks.md has the measurements). A compiled graph may round the last
    bits of some floats differently from eager PyTorch (fused kernels, reordered reductions), so a
    compiled result is a different result: `eval` is part of the run key while compile is true,
    and left out of it (existing keys unchanged) while false."""

    compile: bool = False


# group -> option kind (the block's `name`, or "" for groups with one kind) -> schema. The model
# group picks its kind by model name (`model_kind`); method and quant come from ptqbench.methods.
RUN_SCHEMAS: dict[str, dict[str, type]] = {
    "calib": {"": CalibConfig},
    "bits": {"": BitsConfig},
    "model": {"timm": TimmModelConfig, "detector": DetectorModelConfig},
    "data": {"imagenet": ImageNetDataConfig, "coco": CocoDataConfig},
    "task": {"classification": ClassificationTaskConfig, "detection": DetectionTaskConfig},
    "logger": {"none": NoLoggerConfig, "wandb": WandbLoggerConfig},
    "cache": {"": CacheConfig},
    "eval": {"": EvalConfig},
}
BLOCKS = ("model", "method", "bits", "calib", "quant", "data", "task", "logger", "cache", "eval")  # `report`: ReportSpec


def model_kind(name: Any) -> str:
    from ptqbench.models.detectors import DETECTORS

    return "detector" if name in DETECTORS else "timm"


def schema_for(group: str, value: Mapping[str, Any]) -> Optional[type]:
    """The dataclass that defines the keys of config block `group` given its composed `value`;
    None when its `name` selects no schema (validation reports that)."""
    if group == "method":
        from ptqbench.methods import METHODS

        cls = METHODS.get(value.get("name"))
        return None if cls is None else cls.Config
    if group == "quant":
        from ptqbench.methods import FullQuantConfig

        return FullQuantConfig
    kinds = RUN_SCHEMAS[group]
    if "" in kinds:
        return kinds[""]
    kind = model_kind(value.get("name")) if group == "model" else value.get("name")
    return kinds.get(kind)


# --- defaults -----------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    """A config value as YAML/JSON writes it (tuples are lists)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def defaults_of(cls: type) -> dict[str, Any]:
    """Field -> default of a schema dataclass (fields without a default are left out: the YAML
    option must give them)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out


def effective_config(cfg: Union[DictConfig, Mapping[str, Any]]) -> dict[str, Any]:
    """`cfg` resolved, with every block's missing keys filled from its schema's defaults: what a
    job actually runs with. Blocks whose schema is unknown (a bad name) are kept as they are."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out = dict(c)
    for group in BLOCKS:
        value = c.get(group)
        if group == "quant" and value is None:
            value = {}
        if not isinstance(value, Mapping):
            continue
        cls = schema_for(group, value)
        if cls is not None:
            out[group] = {**defaults_of(cls), **_plain(dict(value))}
    return out


# --- typed settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSettings:
    """The validated effective config of one job, typed: read `settings.calib.size` instead of
    casting `cfg.calib.size`. Built by `ptqbench.validate.validate_config` (or `job_settings` on a
    config known to be valid)."""

    run: RunConfig
    model: Union[TimmModelConfig, DetectorModelConfig]
    method: Any                         # the method's Config dataclass instance
    method_name: str
    bits: BitsConfig
    calib: CalibConfig
    quant: Any                          # ptqbench.methods.FullQuantConfig
    data: Union[ImageNetDataConfig, CocoDataConfig]
    task: Union[ClassificationTaskConfig, DetectionTaskConfig]
    logger: Optional[Union[NoLoggerConfig, WandbLoggerConfig]]
    cache: CacheConfig
    effective: dict[str, Any]           # the plain effective config (what the run key hashes)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _build(cls: type, value: Mapping[str, Any]) -> Any:
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    vals = {k: (tuple(v) if isinstance(v, list) and "tuple" in str(hints.get(k)) else v) for k, v in value.items()}
    return cls(**vals)


def job_settings(cfg: Union[DictConfig, Mapping[str, Any]]) -> JobSettings:
    """The typed settings of a config that passed validation (no checks here beyond the
    dataclasses' own: call `validate_config` for the error messages)."""
    from ptqbench.methods import METHODS, FullQuantConfig

    eff = effective_config(cfg)
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    method = dict(eff["method"])
    name = method.pop("name")
    logger = eff.get("logger")
    return JobSettings(
        run=RunConfig(**{k: eff[k] for k in run_keys if k in eff}),
        model=_build(schema_for("model", eff["model"]), eff["model"]),
        method=METHODS[name].Config(**method),
        method_name=name,
        bits=BitsConfig(**eff["bits"]),
        calib=CalibConfig(**eff["calib"]),
        quant=FullQuantConfig.from_mapping(eff.get("quant")),
        data=_build(schema_for("data", eff["data"]), eff["data"]),
        task=_build(schema_for("task", eff["task"]), eff["task"]),
        logger=None if logger is None else _build(schema_for("logger", logger), logger),
        cache=CacheConfig(**eff.get("cache", {})),
        effective=eff,
        eval=EvalConfig(**(eff.get("eval") or {})),
    )
