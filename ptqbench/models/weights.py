"""Find and load model weights: explicit checkpoint, then local weights folders, then timm's hub.

A checkpoint must match the model exactly (strict load): a partial load would benchmark a
half-random network without anyone noticing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from torch import nn

from ptqbench.errors import WeightsError
from ptqbench.hashing import state_dict_fingerprint
from ptqbench.models.families import family_of
from ptqbench.models.zoo import ModelEntry
from ptqbench.paths import data_root

WEIGHTS_ENV = "PTQBENCH_WEIGHTS"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def weight_search_dirs(weights_dir: Optional[str]) -> list[Path]:
    """Local folders searched for weights, in order: model.weights_dir, $PTQBENCH_WEIGHTS,
    $PTQBENCH_DATA/weights (default ../shared/data/weights)."""
    dirs = [Path(weights_dir).expanduser()] if weights_dir else []
    if os.environ.get(WEIGHTS_ENV):
        dirs.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    dirs.append(data_root() / "weights")
    return dirs


def local_candidates(entry: ModelEntry, dirs: list[Path]) -> list[Path]:
    """File names tried in each folder: `{arch}.{tag}{suffix}`, then `{arch}{suffix}`."""
    return [d / f"{stem}{suf}" for d in dirs for stem in (entry.timm_name, entry.arch) for suf in WEIGHT_SUFFIXES]


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why `path` cannot be a weights file (missing, a folder, empty), None when it may be one.
    Cheap (a stat, a folder listing), so the config check runs it before any work."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        which = (f"it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}: give one of them, "
                 f"e.g. {path / inside[0]}") if inside else f"it holds no {'/'.join(WEIGHT_SUFFIXES)} file"
        return f"{path} is a directory, not a weights file ({which})"
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a regular file"
    if path.stat().st_size == 0:
        return f"{path} is empty (0 bytes; an interrupted download or copy?): replace it"
    return None


def _file_kind(path: Path) -> str:
    """What the first bytes of `path` say it is: 'torch zip', 'torch pickle', 'safetensors', 'text'
    (with its start) or 'unknown binary'."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "torch zip"
    if head[:1] == b"\x80":
        return "torch pickle"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 << 20:
        return "safetensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary"
    if all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return f"text starting {text.splitlines()[0][:60]!r}" if text.strip() else "text"
    return "unknown binary"


def read_state_dict(path: Path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a torch checkpoint, unwrapping common wrappers
    ({'model': ...}, {'state_dict': ...}) and DataParallel's 'module.' prefix. `weights_only=False`
    is a full unpickle, for torch files the user trusts (mmdet checkpoints' pickled 'meta')."""
    fix = "Fix: model.checkpoint=PATH of the .safetensors or .pth weights file"
    problem = checkpoint_problem(path)
    if problem:
        raise WeightsError(f"cannot load checkpoint: {problem}. {fix}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # corrupt or foreign file: say what the file is, not only the loader's error
        kind = _file_kind(path)
        said = f"; the loader said {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if kind.startswith("text"):  # here the loader's complaint (`KeyError: 101`) would only mislead
            what = (f"{path} is a text file ({kind}), not saved weights: a Git LFS pointer or a web page saved "
                    "in place of the download? Fetch the real file")
        elif kind == "unknown binary":
            what = f"{path} is neither a torch checkpoint nor a safetensors file"
        else:
            what = f"{path} looks like a {kind} file but does not load (truncated or damaged? replace it){said}"
        raise WeightsError(f"cannot load checkpoint: {what}. {fix}") from e
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load `sd` into `model` or raise a WeightsError listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def show(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f", ... ({len(xs)} in all)" if len(xs) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)}")
        raise WeightsError(
            f"checkpoint {source} does not match model {arch}: " + "; ".join(parts)
            + ". Pick the model that matches the checkpoint (model=...), or the right model.checkpoint."
        )
    model.load_state_dict(sd, strict=True)


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers: identifies the exact FP network for caching."""
    return state_dict_fingerprint(model.state_dict())


def create_model(
    entry: ModelEntry,
    checkpoint: Optional[str] = None,
    weights_dir: Optional[str] = None,
    pretrained: bool = True,
    allow_download: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the timm model in eval mode and load its weights.

    Order: `checkpoint` if given; else the first file found in the local weights folders; else
    timm's pretrained download (if `allow_download`). `pretrained=False` gives random weights
    (for tests and timing) and says so in the returned info, which also names the architecture
    that was built (`arch`, `timm_name`) and its model family.
    """
    try:
        model = timm.create_model(entry.timm_name, pretrained=False)
    except Exception as e:
        raise WeightsError(f"timm cannot build {entry.timm_name}: {e}") from e
    info: dict[str, Any] = {"timm_name": entry.timm_name}
    if not pretrained:
        info["source"] = "random_init"
    elif checkpoint:
        path = Path(checkpoint).expanduser()
        load_strict(model, read_state_dict(path), str(path), entry.arch)
        info.update(source="checkpoint", path=str(path.resolve()))
    else:
        tried = local_candidates(entry, weight_search_dirs(weights_dir))
        found = next((p for p in tried if p.is_file()), None)
        if found is not None:
            load_strict(model, read_state_dict(found), str(found), entry.arch)
            info.update(source="local", path=str(found.resolve()))
        else:
            hub_error = "download disabled (model.allow_download=false)"
            if allow_download:
                try:
                    model = timm.create_model(entry.timm_name, pretrained=True)
                    info["source"] = "timm_hub"
                except Exception as e:  # offline, no cache
                    hub_error = f"timm download failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            if info.get("source") != "timm_hub":
                folders = sorted({str(p.parent) for p in tried})
                raise WeightsError(
                    f"no weights for {entry.timm_name}. Looked in {folders} for "
                    f"{entry.timm_name}{{{','.join(WEIGHT_SUFFIXES)}}} or {entry.arch}{{...}}; {hub_error}. "
                    "Fix: model.checkpoint=PATH, or put the file in one of those folders "
                    f"(model.weights_dir=DIR or ${WEIGHTS_ENV}=DIR), or go online."
                )
    model.eval()
    # what actually ran: the architecture timm built and the family that patches it
    info.update(arch=entry.arch, family=family_of(model).name)
    return model, info
