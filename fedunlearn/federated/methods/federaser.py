"""federaser: calibrated replay of the stored updates (Liu et al. 2021, "FedEraser").

The server kept every client's update at rounds 1, 1 + dt, ... Unlearning replays only those
rounds, from the same initial model and without the departing client: in each replayed round
the remaining clients run a short calibration training (a `calib_fraction` of their usual local
steps) from the current calibrated model, and the server keeps the direction of each client's
stored update and the size of its calibration update, layer by layer:

    u_i = ||calib_i|| * stored_i / ||stored_i||      (per parameter tensor)

then aggregates them with FedAvg weights. Fewer rounds and fewer local steps than retraining.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.config import check_range
from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext, FedResult


@dataclass(frozen=True)
class Config:
    calib_fraction: float = 0.5  # share of the usual local steps each calibration run takes

    def __post_init__(self):
        check_range("calib_fraction", self.calib_fraction, 0.01, 1.0)


def calibrate(stored: fedavg.State, calib: fedavg.State, eps: float = 1e-12) -> fedavg.State:
    """The stored update's direction with the calibration update's norm, tensor by tensor."""
    out = {}
    for key, old in stored.items():
        out[key] = old * (float(calib[key].norm()) / max(float(old.norm()), eps))
    return out


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    if not ctx.history.rounds:
        raise FedUnlearnError("federaser needs the stored client updates; set federation.store_every >= 1")
    state = ctx.history.rounds[0].global_state
    curve, replayed = [], 0
    for stored in ctx.history.rounds:
        counts = {cid: n for cid, n in stored.counts().items() if cid != ctx.departing}
        if not counts:
            continue
        result = ctx.fit(sorted(counts), state, {"data_fraction": cfg.calib_fraction})
        # stored updates are read one at a time (from disk, with federation.history = "disk")
        updates = ((calibrate(stored.updates[cid][0], new), counts[cid]) for cid, (new, _) in result.updates.items())
        state = fedavg.add(state, fedavg.weighted_sum(updates, sum(counts[cid] for cid in result.updates)))
        # BatchNorm statistics are not replayed: keep the calibration round's own aggregate
        state.update({k: v for k, v in result.state.items() if "running" in k or not fedavg.is_float(v)})
        curve.append(state)
        replayed += 1
    return FedResult(state, replayed, curve, {"replayed_rounds": replayed})
