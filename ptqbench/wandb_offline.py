"""Read back an offline wandb run (`offline-run-*/run-<id>.wandb`) without a server.

wandb >= 0.19 writes no wandb-summary.json or config.yaml for offline runs: everything is in the
`.wandb` transaction log (a LevelDB-style record log of protobuf `Record`s behind a 7-byte
W&B header). Reading it lets the tests, and a user without network access, check that a run holds
what ptqbench logged (group, job type, tags, config, summary, table files) before `wandb sync`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

_HEADER = 7            # ":W&B", magic 0xBEE1, version byte
_BLOCK = 32768         # LevelDB log block size
_CHUNK_HEADER = 7      # crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run holds, as plain Python values."""

    path: Path
    id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def table_files(self, key: str) -> list[Path]:
        """The JSON files of the wandb Tables logged under `key` (e.g. "layer_sqnr")."""
        media = self.path / "files" / "media" / "table"
        return sorted(media.glob(f"{key}_*.table.json"))


def _chunks(data: bytes) -> Iterator[bytes]:
    """The records of a LevelDB log, reassembled from their FIRST/MIDDLE/LAST fragments."""
    if data[:4] != b":W&B":
        raise ValueError("not a wandb transaction log (no :W&B header)")
    pos, parts = _HEADER, []
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        body = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind == 0:  # zero padding up to the block end
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            parts = [body]
        elif kind == _MIDDLE:
            parts.append(body)
        elif kind == _LAST:
            parts.append(body)
            yield b"".join(parts)
            parts = []


def _items(items: Any) -> dict[str, Any]:
    out = {}
    for it in items:
        key = "/".join(it.nested_key) if it.nested_key else it.key
        out[key] = json.loads(it.value_json) if it.value_json else None
    return out


def read_offline_run(run_dir: Path | str) -> OfflineRun:
    """Parse `<run_dir>/run-*.wandb` (an `offline-run-*` folder); the last value of each summary
    or config key wins, as on the server."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}; pass an offline-run-* folder")
    out = OfflineRun(run_dir)
    for blob in _chunks(files[0].read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(blob)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.id, out.group, out.job_type, out.name = r.run_id, r.run_group, r.job_type, r.display_name
            out.tags = list(r.tags)
            out.config.update(_items(r.config.update))
        elif kind == "config":
            out.config.update(_items(rec.config.update))
        elif kind == "summary":
            out.summary.update(_items(rec.summary.update))
        elif kind == "history":
            out.history.append(_items(rec.history.item))
    return out
