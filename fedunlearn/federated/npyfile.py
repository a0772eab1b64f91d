"""Flat .npy files streamed chunk by chunk, each with a SHA-256 checksum file beside it.

The server's history (store.py) writes a model as one 1-D .npy vector one tensor at a time, so
neither writing nor reading needs more than one model in memory; the checksum is computed while
writing and checked before any read, so a damaged or altered file is an error, never silently
wrong weights. Writes are atomic (a temporary file renamed on close).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from fedunlearn.errors import CheckpointError


class NpyWriter:
    """Writes a 1-D .npy file chunk by chunk, hashing the bytes as they go; atomic on close."""

    def __init__(self, path: Path, dtype, length: int):
        self.path, self.dtype = path, np.dtype(dtype)
        self.tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "wb")
        self.hash = hashlib.sha256()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (length,)}
        self._put(_header_bytes(header))

    def _put(self, data: bytes) -> None:
        self.file.write(data)
        self.hash.update(data)

    def write(self, chunk: np.ndarray) -> None:
        self._put(np.ascontiguousarray(chunk, dtype=self.dtype).tobytes())

    def close(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)
        sidecar(self.path).write_text(self.hash.hexdigest())


def _header_bytes(header: dict) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()  # magic string included


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class NpyReader:
    """Reads a 1-D .npy file chunk by chunk after checking it against its checksum."""

    def __init__(self, path: Path, verify: bool = True):
        if not path.is_file() or not sidecar(path).is_file():
            raise CheckpointError(f"stored file '{path}' or its checksum is missing (purged, or the store is incomplete)")
        if verify and file_sha256(path) != sidecar(path).read_text().strip():
            raise CheckpointError(f"stored file '{path}' does not match its checksum (corrupted or altered)")
        self.file = open(path, "rb")
        np.lib.format.read_magic(self.file)
        shape, _, dtype = np.lib.format.read_array_header_1_0(self.file)
        self.dtype, self.length = dtype, shape[0]

    def read(self, count: int) -> np.ndarray:
        return np.fromfile(self.file, dtype=self.dtype, count=count).astype(np.float32, copy=False)

    def read_sparse(self, count: int, k: int) -> np.ndarray:
        """The next tensor of a top-k file: its k (index, value) records scattered into `count` zeros."""
        records = np.fromfile(self.file, dtype=self.dtype, count=k)
        dense = np.zeros(count, dtype=np.float32)
        dense[records["i"]] = records["v"]
        return dense

    def close(self) -> None:
        self.file.close()
