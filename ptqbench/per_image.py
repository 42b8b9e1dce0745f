"""Per-image results of a classification run, kept in its record so that two methods can be
compared on the same images (paired bootstrap, `ptqbench.report.significance`).

Only what the tests need is kept: one bit per image for "top-1 correct" and one for "top-5
correct", packed and base64-encoded (50,000 images -> 8.3 KB per metric), in evaluation order,
with the hash of the evaluation image ids so that runs over different images are never paired.
Full logits would be 200 MB per run on ImageNet; the FP ones are in the cache already.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping, Optional

import numpy as np

PER_IMAGE_KEY = "per_image"
PER_IMAGE_VERSION = 1


def encode_hits(hits: np.ndarray) -> str:
    """A boolean vector -> base64 of its bits (numpy's packbits, big-endian within a byte)."""
    return base64.b64encode(np.packbits(np.asarray(hits, dtype=bool)).tobytes()).decode("ascii")


def decode_hits(text: str, n: int) -> np.ndarray:
    """The inverse of `encode_hits` for a vector of `n` images."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii")), dtype=np.uint8)
    bits = np.unpackbits(raw)
    if bits.size < n or bits.size - n >= 8:
        raise ValueError(f"per-image field holds {bits.size} bits, not {n} images")
    return bits[:n].astype(bool)


def per_image_field(logits: Any, labels: Any, eval_ids_sha: str) -> dict[str, Any]:
    """The record's `per_image` block from a run's logits and labels (tensors or arrays, evaluation
    order): `{"version", "images", "eval_ids_sha", "top1", "top5"}`."""
    logits = np.asarray(logits.detach().cpu() if hasattr(logits, "detach") else logits, dtype=np.float32)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).astype(np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not describe the same images")
    k = min(5, logits.shape[1])
    top = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    top1 = logits.argmax(axis=1) == labels
    top5 = (top == labels[:, None]).any(axis=1)
    return {"version": PER_IMAGE_VERSION, "images": int(labels.size), "eval_ids_sha": eval_ids_sha,
            "top1": encode_hits(top1), "top5": encode_hits(top5)}


def hits_of(record: Mapping[str, Any], metric: str) -> Optional[tuple[str, np.ndarray]]:
    """(eval_ids_sha, per-image hits) of `metric` ("top1"/"top5") in a record, None when the record
    has no per-image results for it (older records, detection runs)."""
    block = record.get(PER_IMAGE_KEY)
    if not isinstance(block, Mapping) or metric not in block or "images" not in block:
        return None
    return str(block.get("eval_ids_sha")), decode_hits(block[metric], int(block["images"]))
