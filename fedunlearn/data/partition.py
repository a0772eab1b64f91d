"""Seeded federated partitioners: every training index goes to exactly one client."""

from __future__ import annotations

import numpy as np

from fedunlearn.errors import DataError


def iid_partition(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    _check(n, num_clients)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float, seed: int,
                        min_size: int = 2, max_tries: int = 100) -> list[np.ndarray]:
    """Label skew: each class is split over the clients with Dirichlet(alpha) proportions.

    Redrawn until every client holds at least `min_size` samples, as in the usual FL
    benchmarks (a client with no data cannot train or be evaluated).
    """
    _check(len(labels), num_clients)
    if alpha <= 0:
        raise DataError(f"Dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise DataError(f"could not give each of {num_clients} clients {min_size} samples with alpha={alpha}; raise alpha or use fewer clients")


def partition(labels: np.ndarray, num_clients: int, kind: str, alpha: float, seed: int) -> list[np.ndarray]:
    if kind == "iid":
        return iid_partition(len(labels), num_clients, seed)
    if kind == "dirichlet":
        return dirichlet_partition(labels, num_clients, alpha, seed)
    raise DataError(f"unknown partition '{kind}'; valid choices: dirichlet, iid")


def _check(n: int, num_clients: int) -> None:
    if num_clients < 1 or num_clients > n:
        raise DataError(f"cannot split {n} samples over {num_clients} clients")
