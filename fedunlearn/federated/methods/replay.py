"""replay: server-only historical replay of the remaining clients' stored updates.

FedRecover (Cao et al., IEEE S&P 2023) recovers a global model by replaying the stored
training rounds without the departing client, using the remaining clients' stored updates
and correcting them with estimated Hessian-vector products (L-BFGS) plus occasional exact
client updates. This is that replay without the corrections, so it sends nothing to anyone:
from the round-0 model, each stored round r applies the sample-weighted mean of the
remaining participants' stored updates,

    w <- w + span_r * sum_{i != k} n_i / (n_r - n_k) * u_i^r,

where span_r is the number of rounds the stored round stands for. A round in which only the
departing client took part is skipped. Exact when every round is stored and the model is
linear in its updates; otherwise the stored updates were computed from models that the
departing client had influenced, which is what FedRecover's corrections estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.methods.subtract import keep_valid_batchnorm


@dataclass(frozen=True)
class Config:
    keep_curve: bool = True  # the replayed global model after each stored round, for the report's curves


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    if not ctx.history.rounds:
        raise FedUnlearnError("replay needs the stored client updates; set federation.store_every >= 1")
    state = fedavg.copy_state(ctx.initial_state)
    curve, replayed = [], 0
    for stored in ctx.history.rounds:
        counts = {cid: n for cid, n in stored.counts().items() if cid != ctx.departing}
        if not counts:
            continue
        others = (stored.updates[cid] for cid in counts)  # read one at a time from a disk store
        state = fedavg.add(state, fedavg.weighted_sum(others, sum(counts.values())), float(stored.span))
        replayed += 1
        if cfg.keep_curve:
            curve.append(fedavg.copy_state(state))
    kept = finish(state, ctx.global_state, curve)
    return FedResult(state, 0, curve, {"replayed_rounds": replayed, "batchnorm_layers_kept": kept})


def finish(state: fedavg.State, global_state: fedavg.State, curve: list) -> int:
    """In place, for a model replayed from round 0: integer buffers (BatchNorm counters) from the
    global model, valid BatchNorm statistics (subtract.py), the curve ending at the result.
    Returns the number of BatchNorm layers whose statistics were taken from the global model."""
    state.update({k: v.clone() for k, v in global_state.items() if not fedavg.is_float(v)})
    kept = keep_valid_batchnorm(state, global_state)
    if curve:
        curve[-1] = state
    return kept
