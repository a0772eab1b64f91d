"""Checkpoints with a checksum beside them, so a corrupted or truncated file is never used.

`save` writes `<name>.pt` and `<name>.json` ({sha256, meta}); the hash covers the weights and the
meta (wall times, stats), so an edited or damaged sidecar is caught like a damaged weights file.
`load` verifies it before unpickling and raises CheckpointError on any mismatch, naming the file
and what to do; `load_or_none` treats such a checkpoint as missing, so it is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from fedunlearn.errors import CheckpointError


def _sha256(data: bytes, meta: dict) -> str:
    digest = hashlib.sha256(data)
    digest.update(b"\0meta:" + json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def save(path: str | Path, obj: Any, meta: dict | None = None) -> Path:
    path = Path(path).with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    # Write to temporary names and rename, so a crash mid-write leaves no half file behind.
    tmp = path.with_suffix(".pt.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    side = path.with_suffix(".json")
    meta = json.loads(json.dumps(meta or {}))  # the form it will be read back in (tuples become lists)
    side.with_suffix(".json.tmp").write_text(json.dumps({"sha256": _sha256(data, meta), "meta": meta}))
    os.replace(side.with_suffix(".json.tmp"), side)
    return path


def exists(path: str | Path) -> bool:
    path = Path(path).with_suffix(".pt")
    return path.is_file() and path.with_suffix(".json").is_file()


def load(path: str | Path) -> tuple[Any, dict]:
    """Returns (object, meta). Raises CheckpointError if the file is missing or does not match its checksum."""
    path = Path(path).with_suffix(".pt")
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        raise CheckpointError(f"checkpoint '{path}' or its checksum file is missing; delete the folder to rebuild it")
    data = path.read_bytes()
    try:
        record = json.loads(side.read_bytes().decode("utf-8"))
        meta = record.get("meta", {})
        valid = isinstance(meta, dict) and record.get("sha256") == _sha256(data, meta)
    except (UnicodeDecodeError, ValueError, AttributeError, TypeError):
        valid = False
    if not valid:
        raise CheckpointError(f"checkpoint '{path}' does not match its checksum (corrupted or partly written); "
                              "delete it and rerun to rebuild it")
    return torch.load(io.BytesIO(data), weights_only=False), meta


def load_or_none(path: str | Path) -> tuple[Any, dict] | None:
    """For resuming: a missing checkpoint is None; a corrupted one is reported and treated as missing."""
    if not exists(path):
        return None
    try:
        return load(path)
    except CheckpointError as err:
        import logging

        logging.getLogger("fedunlearn").warning("%s -- rebuilding it", err)
        return None


_SOURCE_KEY: str | None = None


def code_key() -> str:
    """The package version and a hash of every fedunlearn source file: part of a checkpoint's key,
    so that results made by other code are rebuilt instead of silently reused."""
    global _SOURCE_KEY
    if _SOURCE_KEY is None:
        import fedunlearn

        root = Path(fedunlearn.__file__).resolve().parent
        digest = hashlib.sha256()
        for file in sorted(root.rglob("*.py")):
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
        _SOURCE_KEY = f"{getattr(fedunlearn, '__version__', '0')}-{digest.hexdigest()[:16]}"
    return _SOURCE_KEY
