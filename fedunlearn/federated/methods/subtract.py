"""subtract: remove the departing client's stored, sample-weighted updates from the global model.

No data and no messages. For each stored round r (standing for `span` rounds) the client k
contributed (n_k / n_r) * u_k^r to the global model; subtracting it leaves the other clients'
contributions with weights n_i / n_r instead of n_i / (n_r - n_k), so with `rescale` the
remaining trajectory w - w_0 is scaled by n / (n - n_k), as retraining without k would weight
it (under partial participation n_k / n is the client's mean share over all rounds, 0 in the
rounds it was not sampled in). Exact when every round is stored and the model is linear in its
updates; an estimate otherwise (the other clients trained from models that k had influenced).
The history gives the weighted sum directly (`client_sum`): the on-disk store keeps it as a
running sum over every round, so it is exact whatever `store_every` is.

BatchNorm running statistics are averaged like weights, so they get subtracted and rescaled
too, and under label skew a running variance can turn negative (measured), which makes every
output NaN. A layer whose running variance is not positive everywhere keeps the global
model's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext, FedResult


@dataclass(frozen=True)
class Config:
    rescale: bool = True  # scale the remaining trajectory by n / (n - n_k)


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    removed, share, used = ctx.history.client_sum(ctx.departing)
    if not used:
        raise FedUnlearnError(f"subtract needs the departing client's stored updates, but the history holds none "
                              f"for client {ctx.departing}; set federation.store_every >= 1")
    state = fedavg.add(ctx.global_state, removed, -1.0)
    if cfg.rescale:
        trajectory = fedavg.delta(state, ctx.initial_state)
        state = fedavg.add(ctx.initial_state, trajectory, 1.0 / (1.0 - share))
        # integer buffers (BatchNorm counters) come from the global model, not round 0
        state.update({k: v.clone() for k, v in ctx.global_state.items() if not fedavg.is_float(v)})
    kept = keep_valid_batchnorm(state, ctx.global_state)
    return FedResult(state, 0, [], {"stored_rounds_used": used, "client_share": share,
                                    "batchnorm_layers_kept": kept})


def keep_valid_batchnorm(state: fedavg.State, fallback: fedavg.State) -> int:
    """In place: layers whose running variance is not all positive take `fallback`'s statistics."""
    kept = 0
    for key in [k for k in state if k.endswith("running_var")]:
        if not bool((state[key] > 0).all()):
            layer = key.removesuffix("running_var")
            for stat in ("running_mean", "running_var"):
                state[layer + stat] = fallback[layer + stat].clone()
            kept += 1
    return kept
