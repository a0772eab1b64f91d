"""Reader for the IDX format of (Fashion-)MNIST, plain or gzipped, with its header checked."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fedunlearn.errors import DataError

# Magic number = 0x00 0x00 <dtype code> <ndim>; only unsigned bytes occur in the MNIST family.
_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file '{path}': {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"'{path}' is not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[2] != _UBYTE:
        raise DataError(f"'{path}': IDX data type 0x{raw[2]:02x} is not supported (expected unsigned bytes 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"'{path}': truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"'{path}': header says {shape} = {expected} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """The inverse of read_idx; used by tests to make small files in the real format."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())
