"""SISA's bookkeeping in plain PyTorch (Bourtoule et al. 2021, "Machine Unlearning").

The training set is split into S disjoint shards and each shard into R slices. A shard's
model is trained slice by slice on the cumulative data (slices 0..r), with a checkpoint after
every slice. The checkpoint of prefix r is named by a hash of exactly the samples of slices
0..r that are still alive (and of the recipe), so that:
- a deletion renames the prefixes of the shards that held the samples, from their first
  affected slice on, and training resumes from the last prefix whose name did not change;
- repeating a request finds every name already there: nothing is trained;
- a checkpoint can never be used for other data than its own: its name would differ;
- a corrupted checkpoint fails its checksum (fedunlearn.checkpoint) and is rebuilt.
Nothing here uses Ray; fedunlearn.unlearn.sisa fans `train_shard` out over a cluster.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn import checkpoint
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.errors import DataError
from fedunlearn.training import TrainConfig, train

log = logging.getLogger("fedunlearn")

Slices = list[np.ndarray]  # one shard: R sorted arrays of training-set positions


def make_plan(n: int, shards: int, slices: int, seed: int) -> list[Slices]:
    """A seeded split of positions 0..n-1 into shards x slices (disjoint, near-equal sizes)."""
    if shards < 1 or slices < 1:
        raise DataError(f"SISA needs at least 1 shard and 1 slice, got shards={shards}, slices={slices}")
    if n < shards * slices:
        raise DataError(f"{n} training samples cannot fill {shards} shards x {slices} slices; use fewer")
    perm = np.random.default_rng(seed).permutation(n)
    return [[np.sort(part) for part in np.array_split(shard, slices)] for shard in np.array_split(perm, shards)]


def alive_plan(plan: list[Slices], alive: np.ndarray) -> list[Slices]:
    """The plan with every deleted position removed (`alive` = positions still in the training set)."""
    return [[part[np.isin(part, alive)] for part in shard] for shard in plan]


def fingerprints(data: ArrayDataset) -> np.ndarray:
    """Per sample: its label and the sum of its inputs, enough to tell other data apart in a
    checkpoint name without hashing every pixel on the (timed) deletion path."""
    return np.stack([data.y.numpy().astype(np.float64), data.x.flatten(1).sum(1).double().numpy()], axis=1)


def prefix_keys(prints: np.ndarray, shard_slices: Slices, base: str, shard: int) -> list[str]:
    """Checkpoint names of prefixes 0..R-1: a hash chain over the alive samples of each slice."""
    keys, h = [], hashlib.sha256(f"{base}/shard{shard}".encode()).digest()
    for r, idx in enumerate(shard_slices):
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        h = hashlib.sha256(h + idx.tobytes() + np.ascontiguousarray(prints[idx]).tobytes()).digest()
        keys.append(f"shard{shard:03d}-slice{r:03d}-{h.hex()[:20]}")
    return keys


def resume_point(ckpt_dir: str | Path, keys: list[str]) -> int:
    """How many prefixes are already trained: 1 + the last slice with a valid checkpoint (0 = none)."""
    for r in range(len(keys) - 1, -1, -1):
        if checkpoint.load_or_none(Path(ckpt_dir) / keys[r]) is not None:  # checksum verified
            return r + 1
    return 0


def prefix_sizes(shard_slices: Slices) -> list[int]:
    return list(np.cumsum([len(part) for part in shard_slices]))


def shard_work(shard_slices: Slices, start: int, epochs: int) -> int:
    """Samples processed (sample-epochs) to train prefixes start..R-1: the cost model of the paper."""
    return int(epochs * sum(prefix_sizes(shard_slices)[start:]))


def makespan(works: list[float], workers: int) -> float:
    """Finish time of jobs taken in order by the first free of `workers` equal workers."""
    free = [0.0] * max(1, workers)
    for work in works:
        heapq.heappush(free, heapq.heappop(free) + work)
    return max(free)


def local_slices(shard_slices: Slices) -> tuple[np.ndarray, Slices]:
    """The shard's positions in slice order, and each slice as a range into that list, so a task
    receives only its own shard's samples."""
    positions = np.concatenate(shard_slices)
    ends = np.cumsum([len(part) for part in shard_slices])
    return positions, [np.arange(end - len(part), end) for part, end in zip(shard_slices, ends)]


def train_shard(data: ArrayDataset, shard_slices: Slices, keys: list[str], start: int, shard: int,
                make_model: Callable[[], nn.Module], recipe: TrainConfig, seed: int, ckpt_dir: str,
                device: torch.device) -> dict:
    """Train prefixes start..R-1 of one shard (slices index `data`), resuming from prefix start-1."""
    began = time.perf_counter()
    model = make_model()
    if start > 0:
        state, _ = checkpoint.load(Path(ckpt_dir) / keys[start - 1])  # verified again; fails loudly if bad
        model.load_state_dict(state)
    sizes = prefix_sizes(shard_slices)
    for r in range(start, len(shard_slices)):
        idx = np.concatenate(shard_slices[:r + 1])
        if len(idx):
            # Each slice is a fresh optimiser run with its own seed, so the state after a slice
            # is a function of the checkpoint before it and the slice's data alone.
            train(model, data.subset(idx), recipe, device, seed=seed + 1000 * shard + r, progress=False)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        checkpoint.save(Path(ckpt_dir) / keys[r], state, {"shard": shard, "slice": r, "samples": int(sizes[r])})
    return {"shard": shard, "start": start, "slices": len(shard_slices) - start,
            "work": shard_work(shard_slices, start, recipe.epochs), "seconds": time.perf_counter() - began}


class ShardEnsemble(nn.Module):
    """The SISA model: shard models aggregated by mean softmax or majority vote.

    forward() returns log-probabilities, so softmax(forward(x)) is the aggregate's prediction
    and the shared evaluation (accuracies, MIA, distances) runs on it unchanged.
    """

    def __init__(self, members: list[nn.Module], aggregate: str = "mean"):
        super().__init__()
        if not members:
            raise DataError("every SISA shard is empty: nothing is left to predict with")
        if aggregate not in ("mean", "vote"):
            raise ValueError(f"aggregate must be 'mean' or 'vote', got {aggregate!r}")
        self.members = nn.ModuleList(members)
        self.aggregate = aggregate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([F.softmax(m(x), dim=1) for m in self.members])  # (shards, batch, classes)
        mean = probs.mean(0)
        if self.aggregate == "mean":
            return mean.clamp_min(1e-12).log()
        votes = F.one_hot(probs.argmax(2), probs.shape[2]).float().mean(0)
        # A little of the mean softmax breaks ties between equally voted classes.
        return (0.999 * votes + 0.001 * mean).clamp_min(1e-12).log()
