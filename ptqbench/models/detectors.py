"""The COCO detectors of the RepQ-ViT / ERQ / DopQ-ViT tables, built from mmdet configs.

Mask R-CNN Swin-T/S come from mmdet's own configs (`mmdet::swin/...`); Cascade Mask R-CNN Swin-T/S
from ptqbench's configs in `mmdet_configs/`, which start from mmdet's Cascade Mask R-CNN and put in
the Swin backbone and the 4conv1fc GIoU heads of the Swin detection release (mmdet 3.x ships no
Swin cascade config). The backbone never downloads ImageNet weights (`init_cfg=None`): a detector
gets its weights from `model.checkpoint` or is randomly initialised (`model.pretrained=false`).

Checkpoints load strictly. Both key layouts are accepted: mmdet's (the mmdet model zoo) and the
Swin release's original backbone names (`backbone.layers.0.blocks.0.attn.qkv`, converted with
mmdet's own `swin_converter`). Which file to load is settled (`resolve_checkpoint`) before the
detector is built, so a missing file costs no build.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ptqbench.errors import ConfigError, WeightsError
from ptqbench.models.weights import WEIGHT_SUFFIXES, load_strict, read_state_dict, weight_search_dirs

CONFIG_DIR = Path(__file__).resolve().parent / "mmdet_configs"
INSTALL_HINT = "install the detection extra: `bash scripts/install_det.sh` (builds/reuses the mmcv wheel, then `pip install -e .[det]`)"


@dataclass(frozen=True)
class DetectorEntry:
    """A detector: its mmdet config (`mmdet::<path>` inside mmdet, or a file in mmdet_configs/)."""

    config: str


DETECTORS: dict[str, DetectorEntry] = {
    "mask_rcnn_swin_t": DetectorEntry("mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py"),
    "mask_rcnn_swin_s": DetectorEntry("mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py"),
    "cascade_mask_rcnn_swin_t": DetectorEntry("cascade-mask-rcnn_swin-t-p4-w7_fpn_4conv1f-giou_3x_coco.py"),
    "cascade_mask_rcnn_swin_s": DetectorEntry("cascade-mask-rcnn_swin-s-p4-w7_fpn_4conv1f-giou_3x_coco.py"),
}


def require_mmdet() -> None:
    """Fail with the install command when mmdet / mmcv's compiled ops are missing."""
    for mod in ("mmengine", "mmcv", "mmdet", "pycocotools"):
        if importlib.util.find_spec(mod) is None:
            raise ConfigError(f"task=detection needs {mod}, which is not installed; {INSTALL_HINT}")
    try:
        from mmcv.ops import RoIAlign, nms  # noqa: F401  (compiled ops)
    except Exception as e:
        raise ConfigError(f"mmcv is installed without its compiled ops ({type(e).__name__}: {e}); {INSTALL_HINT}") from e


def detector_entry(name: str) -> DetectorEntry:
    if name not in DETECTORS:
        raise ConfigError(f"model={name!r} is not a detector; task=detection takes one of {sorted(DETECTORS)}")
    return DETECTORS[name]


def load_config(entry: DetectorEntry) -> Any:
    """The detector's mmengine Config (model, test pipeline, evaluator)."""
    from mmengine.config import Config

    if entry.config.startswith("mmdet::"):
        import mmdet

        path = Path(mmdet.__file__).parent / ".mim" / "configs" / entry.config[len("mmdet::"):]
    else:
        path = CONFIG_DIR / entry.config
    if not path.is_file():
        raise ConfigError(f"mmdet config {path} not found; install the pinned mmdet (constraints.txt)")
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.init_cfg = None  # no ImageNet download: weights come from the checkpoint
    return cfg


def set_test_cfg(cfg: Any, score_thr: Optional[float], max_per_img: Optional[int]) -> None:
    """Override the R-CNN test thresholds (null keeps the config's: score 0.05, 100 per image)."""
    rcnn = cfg.model.test_cfg.rcnn
    if score_thr is not None:
        rcnn.score_thr = float(score_thr)
    if max_per_img is not None:
        rcnn.max_per_img = int(max_per_img)


def _is_original_swin(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.layers.") for k in sd) and not any(k.startswith("backbone.stages.") for k in sd)


def convert_swin_release(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone keys of the Swin detection release -> mmdet's SwinTransformer (mmdet's converter)."""
    from mmdet.models.backbones.swin import swin_converter

    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {**rest, **swin_converter(backbone)}


def resolve_checkpoint(name: str, checkpoint: Optional[str], pretrained: bool,
                       weights_dir: Optional[str] = None) -> Optional[Path]:
    """The weights file of detector `name`, or None for random weights (`pretrained=False`).

    `checkpoint` if given (it must exist), else `<name>.pth` (or another weights suffix) in the
    local weights folders (model.weights_dir, $PTQBENCH_WEIGHTS, $PTQBENCH_DATA/weights), so a sweep
    over detectors finds each one's file. Called before the detector is built.
    """
    if not pretrained:
        return None
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.checkpoint={checkpoint}: no such file; give the path of the {name} "
                               "checkpoint (mmdet model zoo or the Swin detection release)")
        return path
    tried = [d / f"{name}{suf}" for d in weight_search_dirs(weights_dir) for suf in WEIGHT_SUFFIXES]
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        folders = sorted({str(p.parent) for p in tried})
        raise WeightsError(
            f"model={name} needs a checkpoint: model.checkpoint=/path/to/{name}.pth (mmdet model zoo or the "
            f"Swin detection release), or {name}.pth in one of {folders} (model.weights_dir=DIR or "
            "$PTQBENCH_WEIGHTS=DIR); model.pretrained=false runs it with random weights (pipeline checks)"
        )
    return found


def read_checkpoint(path: Path, unsafe_load: bool) -> dict[str, torch.Tensor]:
    """A detector state dict from an mmdet checkpoint ({'state_dict': ..., 'meta': ...}).

    mmdet checkpoints carry a pickled 'meta' that torch's safe loader may refuse; `unsafe_load`
    (model.unsafe_load=true) allows a full unpickle for files the user trusts. The error names that
    option only when the safe loader is what refused the file.
    """
    if not unsafe_load:
        try:
            return read_state_dict(path)
        except WeightsError as e:
            if isinstance(e.__cause__, pickle.UnpicklingError):
                raise WeightsError(
                    f"{e}. If this is an mmdet checkpoint you trust, model.unsafe_load=true reads it with a full "
                    "unpickle (its 'meta' holds objects torch's safe loader refuses)"
                ) from e
            raise
    return read_state_dict(path, weights_only=False)


@contextlib.contextmanager
def quiet_mmengine(level: int = logging.WARNING) -> Iterator[None]:
    """mmengine's current logger at `level` inside the block.

    `init_weights()` logs one "Initialized by ..." entry per parameter (hundreds per detector) to
    mmengine's current logger, or writes them into that logger's log file when it has one; a job
    has no use for either. Its own logging (ptqbench's logger) is untouched.
    """
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def build_detector(name: str, cfg: Any, checkpoint: Optional[str], pretrained: bool, unsafe_load: bool,
                   seed: int, weights_dir: Optional[str] = None) -> tuple[nn.Module, dict[str, Any]]:
    """The mmdet detector in eval mode with its weights, and a description for the run record.

    Weights as `resolve_checkpoint` finds them (checked before the build); `pretrained=False` gives
    random weights.
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    path = resolve_checkpoint(name, checkpoint, pretrained, weights_dir)
    register_all_modules(init_default_scope=True)
    torch.manual_seed(seed)
    with quiet_mmengine():
        model = MODELS.build(cfg.model)
        model.init_weights()
    info: dict[str, Any] = {"mmdet_config": DETECTORS[name].config}
    if path is not None:
        sd = read_checkpoint(path, unsafe_load)
        if _is_original_swin(sd):
            sd = convert_swin_release(sd)
            info["converted"] = "swin_release_backbone_keys"
        load_strict(model, sd, str(path), name)
        info.update(source="checkpoint", path=str(path.resolve()))
    else:
        info["source"] = "random_init"
    model.eval()
    return model, info
