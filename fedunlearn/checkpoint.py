"""Checkpoints with a checksum beside them, so a corrupted or truncated file is never used.

`save` writes `<name>.pt` and `<name>.json` ({sha256, meta}); `load` verifies the hash before
unpickling and raises CheckpointError on any mismatch, naming the file and what to do.
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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    side.with_suffix(".json.tmp").write_text(json.dumps({"sha256": _sha256(data), "meta": meta or {}}))
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
        record = json.loads(side.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"checksum file '{side}' is corrupted; delete '{path}' to rebuild it") from None
    if record.get("sha256") != _sha256(data):
        raise CheckpointError(f"checkpoint '{path}' does not match its checksum (corrupted or partly written); "
                              "delete it and rerun to rebuild it")
    return torch.load(io.BytesIO(data), weights_only=False), record.get("meta", {})


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
