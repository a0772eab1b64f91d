"""FedAvg for R rounds, keeping what FedEraser needs: client updates every `store_every` rounds."""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from fedunlearn.federated.fedavg import RoundResult, State
from fedunlearn.federated.history import History

log = logging.getLogger("fedunlearn")

Fit = Callable[[list[int], State, dict], RoundResult]


def sample_clients(clients: list[int], per_round: int, seed: int, rnd: int) -> list[int]:
    """The clients of round `rnd`: all of them (per_round = 0 or >= len), else a seeded sample."""
    if not per_round or per_round >= len(clients):
        return list(clients)
    rng = np.random.default_rng([seed, rnd, 7411])
    return sorted(int(c) for c in rng.choice(clients, per_round, replace=False))


def run_fedavg(fit: Fit, clients: list[int], state: State, rounds: int, store_every: int = 0,
               config: dict | None = None, desc: str = "fedavg", per_round: int = 0, seed: int = 0,
               history=None, lr_at: Callable[[int], float] | None = None
               ) -> tuple[State, History, list[State], list[tuple[int, int]]]:
    """Returns (final state, history, global state after each round, [(round, failed client)]).

    With `per_round` > 0 each round trains a seeded sample of that many `clients` (partial
    participation); the history records who took part in each stored round.

    The history holds rounds 1, 1 + store_every, ... and always the last round (PGA's reference
    model needs the departing client's last update); each stored round's `span` is the number
    of rounds it stands for, so the spans add up to `rounds`. store_every = 0 keeps no history.
    `history` is where rounds are recorded as they finish (default: an in-memory History; the
    on-disk store of store.py also keeps a running sum per client over every round).
    `lr_at(round)`, when given, is the clients' learning rate in that round (round_lr below).
    """
    stored = stored_rounds(rounds, store_every)
    history = history if history is not None else History(store_every=store_every)
    curve, failures = [], []
    for rnd in range(1, rounds + 1):
        lr = {"lr": lr_at(rnd)} if lr_at else {}
        result = fit(sample_clients(clients, per_round, seed, rnd), state, {**(config or {}), **lr, "round": rnd})
        span = (stored + [rounds + 1])[stored.index(rnd) + 1] - rnd if rnd in stored else 0
        history.record(rnd, state, result.updates, span)
        failures += [(rnd, cid) for cid in result.failed]
        state = result.state
        curve.append(state)
        log.info("%s round %d/%d: %d clients aggregated%s", desc, rnd, rounds, len(result.updates),
                 f", failed: {result.failed}" if result.failed else "")
    return state, history, curve, failures


def stored_rounds(rounds: int, store_every: int) -> list[int]:
    if not store_every:
        return []
    return sorted(set(range(1, rounds + 1, store_every)) | {rounds})


def round_lr(fed) -> Callable[[int], float] | None:
    """The clients' learning rate by round under `federation.round_lr` (None: the local recipe's, every round).

    "cosine" anneals it from the recipe's lr in round 1 towards 0 at round `federation.rounds` (and
    holds the last value past it), so the global model settles instead of swinging from one round to
    the next on skewed data; training and retraining use the same rounds, so the same schedule."""
    if getattr(fed, "round_lr", "constant") == "constant":
        return None
    base, horizon = fed.local.lr, fed.rounds
    return lambda rnd: base * 0.5 * (1.0 + math.cos(math.pi * (min(rnd, horizon) - 1) / horizon))
