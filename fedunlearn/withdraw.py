"""`fedunlearn withdraw`: remove one client from a finished run's global model, from its stored history.

The history folder is the on-disk store (fedunlearn/federated/store.py) that our federated run
or any Flower ServerApp wrapped with `RecordingStrategy` (federated/recorder.py) wrote. A
server-side method (one that sends no message: `subtract`, or `source_free_absent` when the
model's architecture is given as `--model module:function`) computes the unlearned model from
the latest global model, the round-0 model and the client's stored updates. Then the
unlearned model becomes the store's latest model, the client's stored updates are deleted,
and one entry is appended to the deletion record.
"""

from __future__ import annotations

import importlib
import time
import uuid
from pathlib import Path

import torch

from fedunlearn import checkpoint, record
from fedunlearn.errors import ConfigError, WithdrawalError

SERVER_SIDE = ("subtract", "source_free_absent")


def load_factory(spec: str):
    module, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"--model must look like 'package.module:function', not '{spec}'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot load the model factory '{spec}': {err}") from None


def withdraw(history_dir: str | Path, client: int, method: str = "subtract", out: str | Path | None = None,
             log: str | Path | None = None, model: str | None = None, input_shape: tuple[int, ...] = (),
             num_classes: int = 0) -> dict:
    from fedunlearn.federated.store import DiskHistory

    if method not in SERVER_SIDE:
        raise ConfigError(f"'{method}' is not a server-side method; a finished run's clients are not reachable. "
                          f"Choose one of: {', '.join(SERVER_SIDE)}")
    if method == "source_free_absent" and not (model and input_shape and num_classes):
        raise ConfigError("source_free_absent needs the architecture: --model module:function, --input-shape "
                          "and --num-classes")
    store = DiskHistory.open(history_dir)
    if client in store.meta["purged"]:
        raise WithdrawalError(f"client {client} has already withdrawn from this run; its updates are gone")
    known = sorted(int(c) for c in store.meta["sums"])
    if client not in known:
        raise WithdrawalError(f"client {client} has no stored updates in '{history_dir}' (clients: {known})")
    before = store.model("final")
    start = time.perf_counter()
    if method == "subtract":  # streamed from the files: a tensor in memory at a time, whatever the model
        from fedunlearn.federated.stream import stream_subtract

        stats = stream_subtract(store, client, store.root / "model" / "final.npy")
        state = store.model("final")
    else:
        state, stats = _run_method(store, client, method, before, model, input_shape, num_classes)
        store.set_model("final", state)  # later withdrawals start from this model
    wall = time.perf_counter() - start
    request = uuid.uuid4().hex
    out = Path(out or Path(history_dir).parent / f"model-{request[:12]}")
    checkpoint.save(out, state, meta={"client": client, "method": method, "request_id": request})
    purge = store.purge(client)
    stats = {"wall_s": wall, **{k: v for k, v in stats.items() if isinstance(v, (int, float))}}
    entry = record.append(log or Path(history_dir).parent / "deletions.jsonl", client, method,
                          record.state_sha256(before), record.state_sha256(state), stats, purge, request)
    return {"model": str(out.with_suffix(".pt")), "record": entry, "purge": purge, "stats": stats}


def _run_method(store, client: int, method: str, before, model, input_shape, num_classes):
    """A registered server-side method on a FedContext built from the store (no transport)."""
    from fedunlearn.config import build
    from fedunlearn.federated.context import FedContext
    from fedunlearn.federated.methods import load_method

    known = sorted(int(c) for c in store.meta["sums"])
    module = load_method(method)
    ctx = FedContext(global_state=before, initial_state=store.model("initial"), history=store, departing=client,
                     remaining=[c for c in known if c != client], num_clients=len(known), num_classes=num_classes,
                     input_shape=tuple(input_shape), make_model=load_factory(model), fed_cfg=None,
                     device=torch.device("cpu"), transport=None, departing_online=False,
                     train_rounds=len(store.meta["rounds"]))
    try:
        result = module.unlearn(ctx, build(module.Config, {}))
    finally:
        if ctx.server is not None:
            ctx.server.close()
    return result.state, result.stats
