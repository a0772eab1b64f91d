"""FedAvg for R rounds, keeping what FedEraser needs: client updates every `store_every` rounds."""

from __future__ import annotations

import logging
from typing import Callable

from fedunlearn.federated.fedavg import RoundResult, State
from fedunlearn.federated.history import History

log = logging.getLogger("fedunlearn")

Fit = Callable[[list[int], State, dict], RoundResult]


def run_fedavg(fit: Fit, clients: list[int], state: State, rounds: int, store_every: int = 0,
               config: dict | None = None, desc: str = "fedavg",
               history=None) -> tuple[State, History, list[State], list[tuple[int, int]]]:
    """Returns (final state, history, global state after each round, [(round, failed client)]).

    The history holds rounds 1, 1 + store_every, ... and always the last round (PGA's reference
    model needs the departing client's last update); each stored round's `span` is the number
    of rounds it stands for, so the spans add up to `rounds`. store_every = 0 keeps no history.
    `history` is where rounds are recorded as they finish (default: an in-memory History; the
    on-disk store of store.py also keeps a running sum per client over every round).
    """
    stored = stored_rounds(rounds, store_every)
    history = history if history is not None else History(store_every=store_every)
    curve, failures = [], []
    for rnd in range(1, rounds + 1):
        result = fit(clients, state, {**(config or {}), "round": rnd})
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
