"""The server's update history on disk, with memory bounded by a few models whatever the rounds.

What the methods need, kept as files written as each round finishes and read lazily:
  clients/<id>/sum.npy       per client, the running sum over every round it took part in of
                             (n_k / n_r) * u_k, with the sum of those shares beside it in
                             store.json (subtract and the source-free methods need only this);
  rounds/<r>/global.npy      the global model at the start of a stored round, and
  rounds/<r>/client-<id>.npy each client's full update of that round, every `store_every`
                             rounds (FedEraser's calibrated replay, PGA's last round);
  model/initial.npy, model/final.npy  the round-0 and the latest global model.
Each file is a flat .npy vector (the state dict's floating-point tensors in `layout` order;
integer buffers live in store.json) with a `.sha256` file beside it, checked on every read.
Files are streamed one tensor at a time, so writing or reading a model never needs more than
that model in memory. `dtype = "float16"` halves the disk (client files only; global models
stay float32). `topk = f` (0 < f < 1) keeps, of each tensor of a per-round client update, only
its ceil(f * size) entries of largest magnitude, as (index, value) records: the other entries
read back as zero (top-k sparsification as in Aji & Heafield, EMNLP 2017; Lin et al., Deep
Gradient Compression, ICLR 2018, without their error feedback: nothing is sent, only stored).
The running sums stay dense, so subtract and the source-free methods are unaffected; the
methods that replay stored rounds (FedEraser, PGA, replay, FedRecovery) see the sparse updates.
`purge(client)` deletes every file of a client once its withdrawal is done. The files themselves
(streamed, checksummed .npy vectors) are npyfile.py's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated.fedavg import State
from fedunlearn.federated.npyfile import NpyReader, NpyWriter, sidecar

META = "store.json"
DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class LazyRound:
    """A stored round whose models are read from disk only when asked for (the StoredRound interface)."""

    store: "DiskHistory"
    round: int
    span: int

    @property
    def global_state(self) -> State:
        return self.store.read_state(self.store.round_dir(self.round) / "global.npy", self.store._extras(self.round))

    @property
    def updates(self) -> "LazyUpdates":
        return LazyUpdates(self.store, self.round)

    def counts(self) -> dict[int, int]:
        """client id -> num_samples, without reading any update."""
        return {int(c): int(n) for c, n in self.store._round_meta(self.round)["clients"].items()}

    def total_samples(self) -> int:
        return int(self.store._round_meta(self.round)["total"])  # purged clients still count


class LazyUpdates(Mapping):
    """client id -> (update, num_samples), each update read from its file when looked up."""

    def __init__(self, store: "DiskHistory", rnd: int):
        self.store, self.rnd = store, rnd

    def _clients(self) -> dict[str, int]:
        return self.store._round_meta(self.rnd)["clients"]

    def __getitem__(self, cid) -> tuple[State, int]:
        n = self._clients()[str(cid)]
        return self.store.read_update(self.store.round_dir(self.rnd) / f"client-{cid}.npy"), int(n)

    def __iter__(self) -> Iterator[int]:
        return (int(c) for c in self._clients())

    def __len__(self) -> int:
        return len(self._clients())

    def __contains__(self, cid) -> bool:
        return str(cid) in self._clients()


class DiskHistory:
    """The History interface (rounds, client_rounds, client_sum, record, nbytes, purge) on files."""

    def __init__(self, root: str | Path, store_every: int = 1, dtype: str = "float32", verify: bool = True,
                 topk: float = 0.0):
        if dtype not in DTYPES:
            raise FedUnlearnError(f"history dtype must be one of {sorted(DTYPES)}, not '{dtype}'")
        if not 0.0 <= topk <= 1.0:
            raise FedUnlearnError(f"history top-k fraction must be in [0, 1], not {topk}")
        self.root, self.verify = Path(root).resolve(), verify  # absolute: a checkpoint may be read from elsewhere
        if (self.root / META).is_file():
            self.meta = json.loads((self.root / META).read_text())
        else:
            self.meta = {"version": 1, "store_every": store_every, "dtype": dtype, "layout": None, "rounds": {},
                         "sums": {}, "purged": [], "failures": [], "topk": float(topk)}
        self.store_every = int(self.meta["store_every"])

    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "DiskHistory":
        if not (Path(root) / META).is_file():
            raise FedUnlearnError(f"'{root}' holds no update history ({META} is missing)")
        return cls(root, verify=verify)

    # pickled (into a checkpoint) as its location only: the updates stay in their files
    def __getstate__(self) -> dict:
        return {"root": str(self.root), "verify": self.verify}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], verify=state["verify"])

    # ---- writing ----------------------------------------------------------------------------
    def record(self, rnd: int, global_state: State, updates: Mapping[int, tuple[State, int]], span: int) -> None:
        """One finished round: add each update to its client's running sum; store the round in full when span > 0."""
        self.begin_round(rnd, global_state, {cid: n for cid, (_, n) in updates.items()}, span)
        for cid, (update, _) in updates.items():
            self.add_update(rnd, cid, update)
        self.save_meta()

    def begin_round(self, rnd: int, global_state: State, counts: Mapping[int, int], span: int) -> None:
        self._ensure_layout(global_state)
        self.meta["rounds"][str(rnd)] = {"span": int(span), "total": int(sum(counts.values())),
                                         "clients": {str(c): int(n) for c, n in counts.items()}, "stored": span > 0}
        if span > 0:
            self.meta["rounds"][str(rnd)]["extras"] = extras_of(global_state)
            self.write_state(self.round_dir(rnd) / "global.npy", global_state, np.float32)
        else:
            self.meta["rounds"][str(rnd)]["clients"] = {}  # only the sums keep this round
            self.meta["rounds"][str(rnd)]["counted"] = {str(c): int(n) for c, n in counts.items()}

    def add_update(self, rnd: int, cid: int, update: State) -> None:
        info = self.meta["rounds"][str(rnd)]
        n = info["clients"].get(str(cid), info.get("counted", {}).get(str(cid)))
        weight = n / info["total"]
        if info["stored"]:
            self.write_update(self.round_dir(rnd) / f"client-{cid}.npy", update)
        self._add_to_sum(cid, update, weight)

    def set_model(self, which: str, state: State) -> None:
        """'initial' or 'final': the round-0 or the latest global model."""
        self._ensure_layout(state)
        self.meta[f"{which}_extras"] = extras_of(state)
        self.write_state(self.root / "model" / f"{which}.npy", state, np.float32)
        self.save_meta()

    def add_failure(self, rnd: int, cid, cause: str) -> None:
        self.meta["failures"].append({"round": rnd, "client": cid, "cause": cause})

    def _add_to_sum(self, cid: int, update: State, weight: float) -> None:
        path = self.client_dir(cid) / "sum.npy"
        old = NpyReader(path, self.verify) if path.is_file() else None
        out = NpyWriter(path, self.dtype, self._length())
        for key, shape in self.meta["layout"]:
            count = int(np.prod(shape))
            part = update[key].detach().cpu().reshape(-1).numpy().astype(np.float32) * weight
            out.write(part + old.read(count) if old is not None else part)
        if old is not None:
            old.close()
        out.close()
        entry = self.meta["sums"].setdefault(str(cid), {"weight": 0.0, "rounds": 0})
        entry["weight"] += weight
        entry["rounds"] += 1

    def save_meta(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (META + ".tmp")
        tmp.write_text(json.dumps(self.meta))
        os.replace(tmp, self.root / META)

    # ---- reading ----------------------------------------------------------------------------
    @property
    def dtype(self):
        return DTYPES[self.meta["dtype"]]

    @property
    def rounds(self) -> list[LazyRound]:
        return [LazyRound(self, int(r), info["span"]) for r, info in sorted(self.meta["rounds"].items(),
                                                                          key=lambda kv: int(kv[0])) if info["stored"]]

    def client_rounds(self, client_id: int) -> list[LazyRound]:
        return [r for r in self.rounds if client_id in r.updates]

    def client_sum(self, client_id: int) -> tuple[State, float, int]:
        """(sum over rounds of (n_k / n_r) * u_k, mean share n_k / n_r over every round, rounds) from the running sum."""
        self._check_not_purged(client_id)
        entry = self.meta["sums"].get(str(client_id))
        if entry is None:
            return {}, 0.0, 0
        # the mean share over every round: rounds the client was not sampled in count as 0
        share = entry["weight"] / max(len(self.meta["rounds"]), 1)
        return self.read_state(self.client_dir(client_id) / "sum.npy"), share, entry["rounds"]

    def model(self, which: str) -> State:
        return self.read_state(self.root / "model" / f"{which}.npy", self.meta.get(f"{which}_extras", {}))

    def read_state(self, path: Path, extras: dict | None = None) -> State:
        reader = NpyReader(path, self.verify)
        try:
            state = {key: torch.from_numpy(reader.read(int(np.prod(shape))).copy()).reshape(shape)
                     for key, shape in self.meta["layout"]}
        finally:
            reader.close()
        for key, (value, dtype) in (extras or {}).items():
            state[key] = torch.tensor(value, dtype=getattr(torch, dtype))
        return state

    @property
    def topk(self) -> float:
        return float(self.meta.get("topk", 0.0))  # stores written before top-k existed are dense

    def _k(self, count: int) -> int:
        return min(count, max(1, math.ceil(self.topk * count)))

    def write_update(self, path: Path, update: State) -> None:
        """A per-round client update: dense in `dtype`, or its top-k (index, value) records per tensor."""
        if not 0.0 < self.topk < 1.0:
            return self.write_state(path, update, self.dtype)
        records = np.dtype([("i", "<u4"), ("v", self.dtype)])
        out = NpyWriter(path, records, sum(self._k(int(np.prod(shape))) for _, shape in self.meta["layout"]))
        for key, shape in self.meta["layout"]:
            flat = update[key].detach().cpu().reshape(-1).float()
            keep = torch.topk(flat.abs(), self._k(flat.numel()), sorted=False).indices.sort().values
            chunk = np.empty(len(keep), dtype=records)
            chunk["i"], chunk["v"] = keep.numpy(), flat[keep].numpy()
            out.write(chunk)
        out.close()

    def read_update(self, path: Path) -> State:
        if not 0.0 < self.topk < 1.0:
            return self.read_state(path)
        reader = NpyReader(path, self.verify)
        try:
            return {key: torch.from_numpy(reader.read_sparse(n, self._k(n))).reshape(shape)
                    for key, shape in self.meta["layout"] for n in [int(np.prod(shape))]}
        finally:
            reader.close()

    def write_state(self, path: Path, state: State, dtype) -> None:
        out = NpyWriter(path, dtype, self._length())
        for key, _ in self.meta["layout"]:
            out.write(state[key].detach().cpu().reshape(-1).numpy())
        out.close()

    def nbytes(self) -> int:
        """Bytes on disk."""
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def files(self) -> list[Path]:
        return sorted(f for f in self.root.rglob("*") if f.is_file())

    # ---- purge ------------------------------------------------------------------------------
    def purge(self, client_id: int) -> dict:
        """Delete every stored file of `client_id` (its running sum, its per-round updates);
        returns what was deleted and a check that no file of it is left."""
        removed = []
        for rnd, info in self.meta["rounds"].items():
            info["clients"].pop(str(client_id), None)
            info.get("counted", {}).pop(str(client_id), None)
            for path in (self.round_dir(int(rnd)) / f"client-{client_id}.npy",):
                for f in (path, sidecar(path)):
                    if f.exists():
                        f.unlink()
                        removed.append(str(f.relative_to(self.root)))
        folder = self.client_dir(client_id)
        if folder.exists():
            removed += [str(f.relative_to(self.root)) for f in folder.rglob("*") if f.is_file()]
            shutil.rmtree(folder)
        self.meta["sums"].pop(str(client_id), None)
        self.meta["purged"] = sorted(set(self.meta["purged"]) | {int(client_id)})
        self.save_meta()
        left = [str(f) for f in self.files() if f"client-{client_id}." in f.name or f"clients/{client_id}/" in str(f)]
        return {"client": int(client_id), "files_deleted": len(removed), "files_left": left, "purged": not left}

    def _check_not_purged(self, client_id: int) -> None:
        if int(client_id) in self.meta["purged"]:
            raise FedUnlearnError(f"client {client_id}'s stored updates were purged after its withdrawal; "
                                  "nothing of it is left to use")

    # ---- layout -----------------------------------------------------------------------------
    def round_dir(self, rnd: int) -> Path:
        return self.root / "rounds" / f"{rnd:05d}"

    def client_dir(self, cid) -> Path:
        return self.root / "clients" / str(cid)

    def _round_meta(self, rnd: int) -> dict:
        return self.meta["rounds"][str(rnd)]

    def _extras(self, rnd: int) -> dict:
        return self._round_meta(rnd).get("extras", {})

    def _ensure_layout(self, state: State) -> None:
        if self.meta["layout"] is None:
            self.meta["layout"] = [[k, list(v.shape)] for k, v in state.items() if torch.is_floating_point(v)]

    def _length(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.meta["layout"])


def extras_of(state: State) -> dict:
    """The integer buffers (BatchNorm counters) as JSON: [value, torch dtype name]."""
    return {k: [v.tolist(), str(v.dtype).removeprefix("torch.")] for k, v in state.items()
            if not torch.is_floating_point(v)}


def make_history(kind: str, root: str | Path, store_every: int, dtype: str = "float32", topk: float = 0.0):
    """federation.history: "memory" keeps History in RAM; "disk" a fresh DiskHistory under `root`."""
    from fedunlearn.federated.history import History

    if kind == "memory":
        return History(store_every=store_every)
    if Path(root).exists():  # a half-written store of an interrupted training: training starts over
        shutil.rmtree(root)
    return DiskHistory(root, store_every, dtype, topk=topk)
