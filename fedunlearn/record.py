"""The deletion record: an append-only JSON-lines log, one entry per withdrawal request, hash-chained.

Each entry holds the request (id, client, time, method), the sha256 of the model before and
after, the metrics of that run and the purge confirmation, plus `prev` (the previous entry's
hash; 64 zeros for the first) and `hash` (sha256 of the entry's canonical JSON without
`hash`). Changing any byte of an entry changes its hash; removing or reordering entries
breaks a `prev` link. `verify` names the first entry that does not check out.

A request is recorded once: appending an entry whose request id, client, method and model
hashes (before and after) match an existing entry returns that entry and appends nothing, so
rerunning a finished run (which resumes from its checkpoints) leaves the record as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from pathlib import Path

import numpy as np
import torch

GENESIS = "0" * 64
SAME_REQUEST = ("request_id", "client", "method", "model_before_sha256", "model_after_sha256")

logger = logging.getLogger("fedunlearn")


def state_sha256(state: dict) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def _canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _plain(value):
    """JSON-safe: numpy scalars to Python, non-finite floats to strings (canonical JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def append(log: str | Path, client, method: str, before: str, after, metrics: dict, purge: dict,
           request_id: str | None = None) -> dict:
    """Append one request's entry, chained to the last one; returns the entry (or, for a request
    the log already holds, that earlier entry, and nothing is appended)."""
    path = Path(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines() if path.is_file() else []
    prev = json.loads(lines[-1])["hash"] if lines else GENESIS
    entry = _plain({"request_id": request_id or uuid.uuid4().hex, "client": client,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "method": method,
                    "model_before_sha256": before, "model_after_sha256": after, "metrics": metrics,
                    "purge": purge, "prev": prev})
    if request_id is not None:
        for number, line in enumerate(lines, 1):
            earlier = json.loads(line)
            if all(earlier.get(k) == entry[k] for k in SAME_REQUEST):
                logger.info("the deletion record already holds request %s (entry %d of %s); not appended again",
                         request_id, number, path)
                return earlier
    entry["hash"] = hashlib.sha256(_canonical(entry)).hexdigest()
    with open(path, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry


def verify(log: str | Path) -> tuple[bool, str]:
    """(ok, message): the chain checks out, or which entry (1-based line) was altered."""
    path = Path(log)
    if not path.is_file():
        return False, f"no record at '{path}'"
    prev = GENESIS
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            claimed = entry.pop("hash")
        except (json.JSONDecodeError, KeyError, AttributeError):
            return False, f"entry {number} is not a valid record entry (altered or truncated)"
        if hashlib.sha256(_canonical(entry)).hexdigest() != claimed:
            return False, f"entry {number} (request {entry.get('request_id')}) was altered: its content does not match its hash"
        if entry.get("prev") != prev:
            return False, (f"entry {number} (request {entry.get('request_id')}) does not follow entry {number - 1}: "
                           "an entry before it was altered, removed or reordered")
        prev = claimed
    return True, f"{len(lines)} entries, chain intact"
