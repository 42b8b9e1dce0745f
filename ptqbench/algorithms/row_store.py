"""A reconstruction's per-image activations kept in a temporary file instead of memory.

Block reconstruction holds, per unit, the quantized input, the FP target and (QDrop, FIMA-Q) the
FP input for every calibration image: on ViT-B 77 MB each at 128 images and 620 MB each at the
papers' 1024, so a job's memory grows with `calib.size`. A step reads only its batch (8 rows), so
the rows can live in a file: `RowStore` writes them once, as a unit produces them chunk by chunk,
and reads the rows a step asks for, the same bytes. What stays in memory is a batch, whatever the
number of images.

The file is unlinked when made (`tempfile.TemporaryFile`), so it disappears when the store is
garbage-collected or the process ends, crashed or not. Its pages sit in the kernel's page cache,
which the kernel can write out and drop; they are not the process's memory. The folder is
Python's temporary folder (`TMPDIR`); a store is refused, before anything is written, when that
disk lacks the room.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable, Iterator, Optional, Union

import torch

from ptqbench.errors import StorageError

_spill = True  # set_spill(); the run's `recon_spill`


def set_spill(on: bool) -> None:
    """Whether reconstruction keeps its per-image activations in files (`recon_spill`, default true)."""
    global _spill
    _spill = bool(on)


def spill_enabled(device: torch.device) -> bool:
    """Spill on CPU only: on a GPU the rows would cross to the host and back every step to save
    device memory that a paper-protocol run has plenty of."""
    return _spill and device.type == "cpu"


class RowStore:
    """Rows of one tensor [N, ...] in an unlinked temporary file: filled in order by `append`, read
    by index (`store[idx]`) or in consecutive chunks (`split`), as a tensor would be."""

    def __init__(self, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype,
                 directory: Optional[str] = None) -> None:
        self.shape = torch.Size((rows, *row_shape))
        self.dtype = dtype
        self.device = torch.device("cpu")
        self._row_bytes = int(torch.empty((), dtype=dtype).element_size() * torch.Size(row_shape).numel())
        folder = directory or tempfile.gettempdir()
        need, free = rows * self._row_bytes, shutil.disk_usage(folder).free
        if need > free:
            raise StorageError(
                f"reconstruction needs {need / 2**20:.0f} MiB of disk in {folder} for its per-image activations "
                f"({rows} images) and {free / 2**20:.0f} MiB are free: point TMPDIR at a larger disk, or keep "
                f"them in memory with recon_spill=false")
        self._file = tempfile.TemporaryFile(dir=folder)
        self._filled = 0

    @classmethod
    def of_chunks(cls, chunks: Iterable[torch.Tensor], rows: int) -> "RowStore":
        """A store of `rows` rows written from `chunks` (consumed one at a time, each dropped once written)."""
        store: Optional[RowStore] = None
        for c in chunks:
            if store is None:
                store = cls(rows, tuple(c.shape[1:]), c.dtype)
            store.append(c)
            del c
        if store is None or store._filled != rows:
            raise ValueError(f"expected {rows} rows, got {0 if store is None else store._filled}")
        return store

    def __len__(self) -> int:
        return self.shape[0]

    def append(self, chunk: torch.Tensor) -> None:
        if tuple(chunk.shape[1:]) != tuple(self.shape[1:]) or chunk.dtype != self.dtype:
            raise ValueError(f"chunk {tuple(chunk.shape)} {chunk.dtype} does not fit rows "
                             f"{tuple(self.shape[1:])} {self.dtype}")
        if self._filled + chunk.shape[0] > len(self):
            raise ValueError(f"{self._filled} + {chunk.shape[0]} rows overflow a store of {len(self)}")
        data = memoryview(chunk.detach().cpu().contiguous().view(torch.uint8).numpy()).cast("B")
        offset, done = self._filled * self._row_bytes, 0
        while done < len(data):
            done += os.pwrite(self._file.fileno(), data[done:], offset + done)
        self._filled += chunk.shape[0]

    def _read(self, start: int, out: torch.Tensor) -> None:
        """Fill `out` (contiguous) with the rows from `start` on."""
        buf = memoryview(out.view(torch.uint8).numpy()).cast("B")
        offset, done = start * self._row_bytes, 0
        while done < len(buf):
            got = os.preadv(self._file.fileno(), [buf[done:]], offset + done)
            if got == 0:
                raise EOFError(f"row store ends at byte {offset + done}, wanted {len(buf) - done} more")
            done += got

    def __getitem__(self, idx: Union[torch.Tensor, slice]) -> torch.Tensor:
        """The rows `idx` (a 1-D index tensor, in its order, or a slice), a new tensor."""
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise ValueError("row store slices take step 1")
            if stop > self._filled:
                raise IndexError(f"rows {start}:{stop} of a store with {self._filled} rows written")
            out = torch.empty((max(stop - start, 0), *self.shape[1:]), dtype=self.dtype)
            if out.shape[0]:
                self._read(start, out)
            return out
        rows = idx.tolist()
        out = torch.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for i, r in enumerate(rows):
            if not 0 <= r < self._filled:
                raise IndexError(f"row {r} of a store with {self._filled} rows written")
            self._read(r, out[i:i + 1])
        return out

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive chunks of at most `size` rows, read one at a time (as `Tensor.split`)."""
        for start in range(0, len(self), size):
            yield self[start:start + size]


Rows = Union[torch.Tensor, RowStore]
