"""GraphEraser's balanced partitions of the training nodes (Chen et al., CCS 2022, Sec. 4).

- BLPA, balanced label propagation: start from a random balanced assignment; each round every
  node wants the shard most of its neighbours are in; the moves are taken in order of how many
  neighbours ask for them, each only while the target shard is below its capacity
  ceil(n / shards) plus a little slack. Keeps communities (and so most edges) inside a shard.
- BEKM, balanced embedding k-means: k-means on node embeddings (the trained model's hidden
  layer) where each round assigns the (node, centroid) pairs in order of distance, a node to
  its nearest centroid that still has room.
Both are plain NumPy; they run once, before any request, on the graph the original saw.
"""

from __future__ import annotations

import math

import numpy as np

from fedunlearn.errors import DataError


def _check(n: int, shards: int, slack: float = 0.0) -> int:
    if n < shards:
        raise DataError(f"{n} training nodes cannot fill {shards} GraphEraser shards; use fewer shards")
    return math.ceil(n / shards * (1 + slack))


def blpa(nodes: np.ndarray, edges: np.ndarray, shards: int, seed: int, rounds: int = 30,
         slack: float = 0.1) -> np.ndarray:
    """Shard of each of `nodes` (graph ids) from the edges among them; returns an array aligned with nodes.

    Shards may grow to (1 + slack) times the mean size: from an exactly balanced start no node
    could move otherwise."""
    n = len(nodes)
    cap = _check(n, shards, slack)
    local = np.full(int(max(nodes.max(), edges.max(initial=0))) + 1, -1)
    local[nodes] = np.arange(n)
    e = local[edges]
    e = e[:, (e >= 0).all(0)]
    src, dst = np.r_[e[0], e[1]], np.r_[e[1], e[0]]
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(n) % shards)
    for _ in range(rounds):
        counts = np.zeros((n, shards))
        np.add.at(counts, (src, label[dst]), 1)
        want = counts.argmax(1)
        gain = counts[np.arange(n), want] - counts[np.arange(n), label]
        movers = np.flatnonzero((want != label) & (gain > 0))
        if len(movers) == 0:
            break
        size = np.bincount(label, minlength=shards)
        moved = 0
        for v in movers[np.argsort(-gain[movers], kind="stable")]:
            if size[want[v]] < cap:
                size[label[v]] -= 1
                size[want[v]] += 1
                label[v] = want[v]
                moved += 1
        if moved == 0:
            break
    return label


def bekm(emb: np.ndarray, shards: int, seed: int, rounds: int = 10) -> np.ndarray:
    """Balanced k-means of the rows of `emb` into `shards` groups of at most ceil(n / shards)."""
    n = len(emb)
    cap = _check(n, shards)
    rng = np.random.default_rng(seed)
    centres = emb[rng.choice(n, shards, replace=False)]
    label = np.zeros(n, dtype=np.int64)
    for _ in range(rounds):
        dist = ((emb[:, None, :] - centres[None]) ** 2).sum(2)
        order = np.argsort(dist, axis=None, kind="stable")
        label[:] = -1
        size = np.zeros(shards, dtype=np.int64)
        for flat in order:
            v, s = divmod(int(flat), shards)
            if label[v] < 0 and size[s] < cap:
                label[v], size[s] = s, size[s] + 1
        new = np.stack([emb[label == s].mean(0) for s in range(shards)])
        if np.allclose(new, centres):
            break
        centres = new
    return label


def cut_share(nodes: np.ndarray, label: np.ndarray, edges: np.ndarray) -> float:
    """Share of the edges among `nodes` that a partition cuts (lost to every shard)."""
    local = np.full(int(max(nodes.max(), edges.max(initial=0))) + 1, -1)
    local[nodes] = np.arange(len(nodes))
    e = local[edges]
    e = e[:, (e >= 0).all(0)]
    return float((label[e[0]] != label[e[1]]).mean()) if e.shape[1] else 0.0
