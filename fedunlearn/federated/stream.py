"""`subtract` on the disk store, one tensor at a time: memory stays at a tensor, not a model.

The same algorithm as fedunlearn/federated/methods/subtract.py (remove the client's
sample-weighted running sum from the global model, rescale the remaining trajectory by
1 / (1 - share), keep the global BatchNorm statistics of any layer whose running variance
would not stay positive), computed by streaming the latest model, the round-0 model and the
client's running sum from their files into the output file. Two passes: the first finds the
BatchNorm layers to keep, the second writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedunlearn.federated.npyfile import NpyReader, NpyWriter
from fedunlearn.federated.store import DiskHistory


def _readers(store: DiskHistory, client: int) -> tuple[NpyReader, NpyReader, NpyReader]:
    return (NpyReader(store.root / "model" / "final.npy", store.verify),
            NpyReader(store.root / "model" / "initial.npy", store.verify),
            NpyReader(store.client_dir(client) / "sum.npy", store.verify))


def _tensors(store: DiskHistory, client: int, share: float, rescale: bool):
    """(key, unlearned tensor, global tensor) in layout order."""
    final, initial, removed = _readers(store, client)
    try:
        for key, shape in store.meta["layout"]:
            count = int(np.prod(shape))
            g, w0, s = final.read(count), initial.read(count), removed.read(count)
            out = g - s
            if rescale:
                out = w0 + (out - w0) / (1.0 - share)
            yield key, out, g
    finally:
        for reader in (final, initial, removed):
            reader.close()


def stream_subtract(store: DiskHistory, client: int, out: Path, rescale: bool = True) -> dict:
    """Writes the unlearned model to `out` (a store-format .npy of the layout); returns stats."""
    store._check_not_purged(client)
    entry = store.meta["sums"].get(str(client))
    if entry is None:
        raise ValueError(f"client {client} has no stored updates")
    share = entry["weight"] / entry["rounds"]
    keep = {key.removesuffix("running_var") for key, out_t, _ in _tensors(store, client, share, rescale)
            if key.endswith("running_var") and not bool((out_t > 0).all())}
    writer = NpyWriter(Path(out), np.float32, store._length())
    for key, out_t, g in _tensors(store, client, share, rescale):
        layer = key.removesuffix("running_var").removesuffix("running_mean")
        writer.write(g if layer in keep and key.endswith(("running_mean", "running_var")) else out_t)
    writer.close()
    return {"stored_rounds_used": entry["rounds"], "client_share": share, "batchnorm_layers_kept": len(keep)}


def read_model(store: DiskHistory, path: Path) -> dict[str, torch.Tensor]:
    """A model written by stream_subtract, with the latest model's integer buffers."""
    return store.read_state(Path(path), store.meta.get("final_extras", {}))
