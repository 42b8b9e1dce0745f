"""Every hash ptqbench stores: cache keys, run keys, weight fingerprints, data signatures.

One home so that a key's recipe is written once: a cache entry, a record or a tracker id is found
again only if the same inputs hash to the same digest, so these functions' outputs are part of the
on-disk format and must not change for unchanged inputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


def sha256_hex(data: bytes | str, n: Optional[int] = None) -> str:
    """Hex sha256 of `data` (str is UTF-8 encoded), cut to its first `n` digits when given."""
    digest = hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()
    return digest if n is None else digest[:n]


def sha_of(items: Iterable[str]) -> str:
    """16-hex-digit key of a list of strings (image ids, file names), one per line."""
    return sha256_hex("\n".join(items), 16)


def json_key(obj: Any) -> str:
    """16-hex-digit key of a JSON-serializable object, independent of dict order (values JSON
    cannot hold are written with `str`)."""
    return sha256_hex(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str), 16)


def content_key(*parts: Any) -> str:
    """16-hex-digit key of the JSON-serializable `parts` (a cache entry's inputs)."""
    return json_key(list(parts))


def short_hash(*parts: Any, n: int = 10) -> str:
    """`n`-hex-digit id of `parts` by their `str` (tracker groups and run ids)."""
    return sha256_hex("|".join(map(str, parts)), n)


def file_sha256(path: Path) -> str:
    """Full hex sha256 of a file's bytes, read in 4 MiB chunks (cache payload checksums)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def code_version(*subpackages: str) -> str:
    """Hash of the ptqbench sources under `subpackages` (all of ptqbench when empty) plus the
    torch/timm versions: a cached result is reused only by the code that produced it."""
    import timm

    h = hashlib.sha256(f"torch={torch.__version__}|timm={timm.__version__}".encode())
    roots = [PACKAGE_DIR / s for s in subpackages] if subpackages else [PACKAGE_DIR]
    for root in roots:
        files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
        for f in files:
            h.update(str(f.relative_to(PACKAGE_DIR)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def state_dict_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Full hex sha256 over a state dict's names and exact tensor bytes (any dtype), sorted by name.

    Tensors are flattened before their bytes are read: a 0-dim buffer (BatchNorm's
    `num_batches_tracked`) cannot be viewed as bytes directly."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def tensors_key(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """16-hex-digit key of named tensors in the given order: names, shapes and float32 values
    (what a module computes, not how its tensors are stored)."""
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
