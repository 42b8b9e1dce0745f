"""The one write path for files other jobs and people read: run records, cache entries and their
sidecars, benchmark tables.

- Atomic: a temp file in the same folder, fsynced, renamed over the target, so a reader (another
  job, the report, a colleague) sees the old file or the complete new one, never half of it.
- Permissions: the temp file is created with mode 0o666 and the process umask applies, as for any
  file the user creates (tempfile.mkstemp would make every record 0600, unreadable to a colleague
  on a shared results folder).
- Errors: an OSError (read-only folder, full disk, a path through a file) becomes a StorageError
  naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable

from ptqbench.errors import storage_error


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty, exclusively created temp file beside `path` (mode 0o666 minus the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # 48 random bits collided: draw again
            continue


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace `path` with what `write(binary_file)` writes; see the module docstring."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as e:
        raise storage_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise storage_error(path, e) from e
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`text` as UTF-8, atomically (tables and reports a reader may open while they are rewritten)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: Path, obj: Any) -> None:
    """`obj` as indented, key-sorted JSON (what records have always looked like), atomically."""
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode()))


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and write and fsync one byte there: a read-only folder, a full
    disk or a path through a file fails here, before any work, with a StorageError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(folder / "write-check")
    except OSError as e:
        raise storage_error(folder, e, "write to") from e
    try:
        os.write(fd, b"\n")
        os.fsync(fd)
    except OSError as e:
        raise storage_error(folder, e, "write to") from e
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
