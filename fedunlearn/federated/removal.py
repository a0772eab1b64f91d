"""Surviving-step removal: take out of the global model only what is left of a client's steps.

`subtract` removes every stored step of the departing client k. But the other clients kept
training after each of k's steps, and part of their later updates undid it (they trained on a
model k had moved, and pulled it back toward their own data). Removing all of k's step then
also removes what was already undone: it overshoots, and the model lands past retraining on the
far side (measured on digits: test accuracy below retrain's where subtraction misses).

For k's contribution to round r, v_r = span_r * n_k / n_r * u_k^r (what the global model
received from k), and L_r, the sum of the other clients' contributions in every later stored
round, the share of v_r still present at the end is estimated by its projection:

    s_r = clip(1 + <L_r, v_r> / |v_r|^2, 0, 1)

(later rounds that moved against v_r by a fraction a of it leave 1 - a of it). The estimate
removes sum_r s_r v_r and, as retraining would weight the others, rescales each round's other
contributions from n_i / n_r to n_i / (n_r - n_k):

    w = w_T - sum_r s_r v_r + sum_r p_r / (1 - p_r) * O_r,   O_r = span_r * sum_{i != k} n_i / n_r u_i^r.

With s_r = 1 everywhere this is FedRecovery's residual removal without its noise. Everything
comes from the stored updates and sample counts the server holds: no data, no messages.
"""

from __future__ import annotations

from fedunlearn.federated import fedavg
from fedunlearn.federated.history import History

State = fedavg.State


def _dot(a: State, b: State, keys) -> float:
    return float(sum(float((a[k].double() * b[k].double()).sum()) for k in keys))


def weight_keys(state: State) -> list[str]:
    """The trained parameters: floating-point entries that are not BatchNorm running statistics."""
    return [k for k, v in state.items() if fedavg.is_float(v) and "running_" not in k]


def surviving_removal(history: History, client: int, global_state: State,
                      rescale: bool = True) -> tuple[State, dict]:
    """(estimate of the model without `client`, stats: the survival share s_r of each of its rounds).

    The stored rounds are read newest first, one round's updates at a time (a disk store is
    never held in memory at once); only the running sum L and the result are kept."""
    rounds = history.rounds
    later: State = {}     # L: others' contributions in the rounds after the current one
    removed: State = {}   # sum_r s_r v_r - p_r / (1 - p_r) O_r
    shares, used = [], 0
    for stored in reversed(rounds):
        counts = stored.counts()
        total = stored.total_samples()
        others_n = {cid: n for cid, n in counts.items() if cid != client}
        others = fedavg.weighted_sum((stored.updates[cid] for cid in others_n), total) if others_n else {}
        others = {k: v * stored.span for k, v in others.items()}
        if client in counts:
            update, n_k = stored.updates[client]
            p = n_k / total
            step = {k: v * (stored.span * p) for k, v in update.items()}
            keys = weight_keys(step)
            size = _dot(step, step, keys)
            share = 1.0 if size == 0.0 or not later else min(1.0, max(0.0, 1.0 + _dot(later, step, keys) / size))
            shares.append(share)
            used += 1
            term = {k: v * share for k, v in step.items()}
            if rescale and others and p < 1.0:
                term = fedavg.add(term, others, -p / (1.0 - p))
            removed = fedavg.add(removed, term) if removed else term
        if others:
            later = fedavg.add(later, others) if later else others
    state = fedavg.add(global_state, removed, -1.0) if removed else fedavg.copy_state(global_state)
    shares.reverse()  # oldest round first
    return state, {"stored_rounds_used": used, "survival_mean": sum(shares) / len(shares) if shares else 1.0,
                   "survival_min": min(shares, default=1.0)}
