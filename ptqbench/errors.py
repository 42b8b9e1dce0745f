"""Errors a user can act on, and the one place that turns an exception into the line they read.

Each message names the problem and the fix. `user_message` is what every entry point prints
(one job, a sweep's job, the results-folder check before Hydra starts): a PTQBenchError or an
OSError on a file gets one clear message, anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Optional, Union


class PTQBenchError(Exception):
    """Base class for user-facing errors (bad config, missing data, bad weights)."""


class ConfigError(PTQBenchError):
    """An unknown name or an out-of-range value in the config."""


class DataNotFoundError(PTQBenchError):
    """A dataset path that does not exist or lacks the expected layout."""


class CorruptDataError(PTQBenchError):
    """A data file that exists but cannot be decoded (truncated, empty, not an image)."""


class WeightsError(PTQBenchError):
    """Weights that cannot be found, or that do not match the model."""


class CalibrationError(PTQBenchError):
    """Calibration failed: non-finite activations, or a quantizer used before calibration."""


class StorageError(PTQBenchError):
    """The results folder (records, cache, logs) cannot be written: read-only, full, not a folder."""


_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_NOT_A_FOLDER = {errno.ENOTDIR, errno.EEXIST}


def storage_error(path: Union[str, Path], err: OSError, what: str = "write") -> StorageError:
    """The StorageError for an OSError met while writing under the results folder: names the
    path, the reason and the fix (free space, a writable folder, `results_dir=DIR`)."""
    named = getattr(err, "filename", None)  # the folder that could not be made, say; never our temp file
    target = Path(named) if named and not str(named).endswith(".tmp") else Path(path)
    reason = err.strerror or str(err)
    if err.errno in _FULL:
        fix = "free space on that disk, or pass results_dir=DIR on another disk"
    elif err.errno in _DENIED:
        fix = "make the folder writable for you, or pass results_dir=DIR (or set PTQBENCH_RESULTS) to a writable folder"
    elif err.errno in _NOT_A_FOLDER:
        fix = "a part of that path is a file, not a folder; pass results_dir=DIR to a folder"
    else:
        fix = "check the disk and the folder's permissions, or pass results_dir=DIR"
    return StorageError(f"cannot {what} {target}: {reason} (errno {err.errno}). Fix: {fix}")


# torch re-raises an error from a DataLoader worker as the same type with the worker's whole
# traceback as its message; the user needs the original message, its last line.
_WORKER_WRAPPED = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def user_message(exc: BaseException) -> Optional[str]:
    """The one-line (or few-line) message a user sees for `exc`, or None when `exc` is a bug whose
    traceback should be shown. Handles PTQBenchError (including one raised in a DataLoader worker)
    and an OSError that names its file (writes under the results folder are turned into
    StorageError with the fix where they happen: `storage_error`)."""
    if isinstance(exc, PTQBenchError):
        text = str(exc)
        if _WORKER_WRAPPED.match(text):
            last = text.rstrip().splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        return f"{type(exc).__name__}: {text}"
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        return f"{type(exc).__name__}: {exc}"  # e.g. [Errno 28] No space left on device: 'PATH'
    return None


def add_note(exc: BaseException, note: str) -> None:
    """Attach `note` to `exc` (PEP 678 notes; set by hand on Python 3.10): `describe` and
    tracebacks show it with the error."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]


def describe(exc: BaseException, notes: bool = True) -> str:
    """`user_message(exc)`, or `Type: message` for anything else (KeyboardInterrupt reads
    "KeyboardInterrupt: interrupted (Ctrl-C)"), followed by the exception's notes."""
    text = user_message(exc)
    if text is None:
        msg = str(exc) or ("interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else "")
        text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    if notes:
        text = "\n".join([text, *getattr(exc, "__notes__", [])])
    return text
