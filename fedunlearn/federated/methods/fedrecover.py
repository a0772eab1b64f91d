"""fedrecover: FedRecover's replay with estimated corrections, on the server alone.

FedRecover (Cao, Jia, Zhang, Gong, IEEE S&P 2023). Plain replay (replay.py) applies each
remaining client's stored update u_i^t as it was computed, from the original global model w_t.
But the recovered model w^_t is elsewhere, and an update depends on where training starts: the
other clients had spent part of their updates undoing what the departing client taught, and
replaying that without the departing client overshoots (with a boosted attacker, to a wrecked
model). FedRecover estimates the update each client would have sent from w^_t,

    u^_i^t = u_i^t - lr_t * B_i (w^_t - w_t),

with B_i an L-BFGS approximation of client i's Hessian, and applies the sample-weighted mean of
the remaining participants' u^_i^t. The paper builds B_i from exact updates the clients compute
at the recovered models (warm-up, periodic and "abnormality" rounds). Here no client is asked
anything: B_i comes from the stored trajectory itself, the secant pairs of client i's own
consecutive stored rounds,

    s = w_t - w_t',   y = g_i^t - g_i^t',   g_i = -u_i / lr (a pseudo-gradient; lr: the round's),

the last `history` of them with positive curvature. Dividing by the round's lr keeps a cosine
schedule's shrinking steps out of y. A client's first stored round has no pair: its update is
replayed as stored. As FedRecover's abnormality check does for its exact rounds, a correction is
capped, at `max_correction` times the norm of the update it corrects: the linear model is
trusted only near the original trajectory. No data, no messages.

Memory: per remaining client, its last round in float32 (8 bytes a weight) and its curvature model,
float64: the diagonal's two sums (16 bytes a weight; one set for all clients with `pooled`) or
`history` L-BFGS pairs (16 bytes a weight each; lbfgs_diagonal holds both, and its B0, 8 more).
Reported as `secant_mib`. For 100 clients of an 11M-weight ResNet-18 that is 27 GB (diagonal), 45 GB
(L-BFGS, history 2) or 9 GB (pooled diagonal), against the stored history's 4 bytes a weight per
client and round; pooled is the choice for big models.

Measured (docs/findings.md, session 12): without exact rounds, L-BFGS's sigma * I gives every
direction the curvature seen along the trajectory and pulls the replay back to the original,
backdoor included (digits matrix: test 0.924, backdoor 77%). The per-coordinate secant
(`hessian = "diagonal"`) leaves alone what the remaining clients never pushed on: it forgets, but
keeps only part of the accuracy (0.14-0.20 below retrain on tuning cells), and the source-free
repair starts there (`start = "recovered"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fedunlearn.config import check_range
from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.methods.replay import finish
from fedunlearn.federated.removal import weight_keys
from fedunlearn.federated.rounds import round_lr
from fedunlearn.influence import flat, unflat
from fedunlearn.lbfgs import LBFGS


@dataclass(frozen=True)
class Config:
    hessian: Literal["lbfgs", "diagonal", "lbfgs_diagonal"] = "lbfgs"  # lbfgs: the paper's; diagonal: per
                                 # coordinate, least squares over every pair of the client; lbfgs_diagonal: L-BFGS
                                 # with that diagonal as B0 in place of sigma * I (Secants)
    history: int = 2             # L-BFGS pairs kept per client (the paper: 2)
    pooled: bool = False         # one diagonal from every remaining client's pairs (less noise, no per-client skew)
    max_correction: float = 1.0  # a correction's norm at most this times the update's; 0: plain replay
    keep_curve: bool = True      # the recovered global model after each stored round, for the report's curves

    def __post_init__(self):
        check_range("history", self.history, 1)
        check_range("max_correction", self.max_correction, 0.0)
        if self.hessian not in ("lbfgs", "diagonal", "lbfgs_diagonal"):
            raise ValueError(f"hessian must be 'lbfgs', 'diagonal' or 'lbfgs_diagonal', got {self.hessian!r}")


def flat_weights(state: fedavg.State, keys: list[str]) -> torch.Tensor:
    """The trained weights as one float64 vector (successive secant pairs nearly cancel in float32)."""
    return flat([state[k].detach().double().cpu() for k in keys])


def unflat_weights(vector: torch.Tensor, like: fedavg.State, keys: list[str]) -> fedavg.State:
    return {k: v.to(like[k].dtype) for k, v in zip(keys, unflat(vector, [like[k] for k in keys]))}


class Secants:
    """Per client: a model of how its pseudo-gradient changes with the model it starts from.

    lbfgs: the compact L-BFGS matrix from the last `history` pairs. Its sigma * I part gives every
    direction the curvature measured along the trajectory, so the correction also pulls back
    directions the remaining clients' data never pushed on (where a backdoor sits). diagonal:
    b_j = sum s_j y_j / sum s_j^2 over all the client's pairs, each coordinate's own secant,
    kept in [0, 1 / lr] so a correction at most undoes the offset (lr * b_j <= 1)."""

    def __init__(self, history: int, kind: str = "lbfgs", pooled: bool = False):
        self.history, self.kind, self.pooled = history, kind, pooled
        self.models: dict[int, LBFGS] = {}
        self.sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def correction(self, cid: int, offset: torch.Tensor, lr: float) -> torch.Tensor | None:
        """lr * B_i offset, or None before the client has a pair."""
        if self.kind == "diagonal":
            if self.key(cid) not in self.sums:
                return None
            return (lr * self.diagonal(cid)).clamp(0.0, 1.0) * offset
        model = self.models.get(cid)
        return lr * model.product(offset).double() if model is not None and len(model) else None

    def observe(self, cid: int, w: torch.Tensor, update: torch.Tensor, lr: float) -> None:
        """Client `cid` sent `update` from the global model `w` at a round with client lr `lr`; its
        pseudo-gradient there is -update / lr. Both are kept in float32 until the client's next
        round, as the store holds them (the float64 difference of two float32 values is exact, so
        this is the pair a float64 copy would give, at half the memory)."""
        if cid in self.last:
            (w0, u0, lr0), w64 = self.last[cid], w.double()
            s, y = w64 - w0.double(), -update.double() / lr + u0.double() / lr0
            if self.kind != "lbfgs":
                sy, ss = self.sums.get(self.key(cid), (torch.zeros_like(s), torch.zeros_like(s)))
                self.sums[self.key(cid)] = (sy + s * y, ss + s * s)
            if self.kind != "diagonal":
                model = self.models.setdefault(cid, LBFGS(self.history))
                if self.kind == "lbfgs_diagonal":
                    model.set_initial(self.diagonal(cid))
                model.add_if_curved(s, y)
        self.last[cid] = (w.float(), update.float(), lr)

    def nbytes(self) -> int:
        """What the secant state holds: per client, its last round in float32 (8 bytes a weight) and,
        per model kind, the float64 sums (16, shared with `pooled`), `history` float64 (s, y) pairs (16 each),
        or with lbfgs_diagonal both and the pairs' B0 (8)."""
        tensors = [t for w, u, _ in self.last.values() for t in (w, u)]
        tensors += [t for pair in self.sums.values() for t in pair]
        for model in self.models.values():
            tensors += [t for t in (model.s, model.y, model.initial) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def key(self, cid: int) -> int:
        return -1 if self.pooled else cid

    def diagonal(self, cid: int) -> torch.Tensor:
        sy, ss = self.sums[self.key(cid)]
        return (sy / ss.clamp(min=1e-30)).clamp(min=0.0)


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    if not ctx.history.rounds:
        raise FedUnlearnError("fedrecover needs the stored client updates; set federation.store_every >= 1")
    lr_at = round_lr(ctx.fed_cfg) if ctx.fed_cfg is not None else None
    keys = weight_keys(ctx.initial_state)
    # the non-trained floats (BatchNorm statistics) are replayed as plain replay does, uncorrected
    rest = [k for k, v in ctx.initial_state.items() if fedavg.is_float(v) and k not in keys]
    state = fedavg.copy_state(ctx.initial_state)
    secants = Secants(cfg.history, cfg.hessian, cfg.pooled)
    curve, replayed, counted = [], 0, {"corrected_updates": 0, "capped_corrections": 0}
    for stored in ctx.history.rounds:
        counts = {cid: n for cid, n in stored.counts().items() if cid != ctx.departing}
        if not counts:  # only the departing client took part: retraining would not have had this round
            continue
        lr = lr_at(stored.round) if lr_at is not None else 1.0
        step, others = corrected_mean(stored, counts, flat_weights(state, keys), keys, rest, lr, secants, cfg, counted)
        moved = unflat_weights(stored.span * step, state, keys)
        state.update({k: state[k] + moved[k] for k in keys})
        state.update({k: state[k] + stored.span * others[k] for k in rest})
        replayed += 1
        if cfg.keep_curve:
            curve.append(fedavg.copy_state(state))
    kept = finish(state, ctx.global_state, curve)
    return FedResult(state, 0, curve, {"replayed_rounds": replayed, **counted, "batchnorm_layers_kept": kept,
                                       "secant_mib": secants.nbytes() / 2**20})


def corrected_mean(stored, counts: dict[int, int], here: torch.Tensor, keys: list[str], rest: list[str], lr: float,
                   secants: Secants, cfg: Config, counted: dict) -> tuple[torch.Tensor, fedavg.State]:
    """The sample-weighted mean of the remaining participants' updates, each corrected from the
    model it was computed at (the stored global model) to `here`, and the plain mean of their
    `rest` entries; every update then becomes a secant pair for its client's later rounds. Each
    update is read once (one at a time from a disk store)."""
    w_t = flat_weights(stored.global_state, keys)
    offset, total = here - w_t, sum(counts.values())
    step, others = torch.zeros_like(w_t), {}
    for cid, n in counts.items():
        update, _ = stored.updates[cid]
        raw = u = flat_weights(update, keys)
        fix = secants.correction(cid, offset, lr) if cfg.max_correction > 0 else None
        if fix is not None:
            limit = cfg.max_correction * float(u.norm())
            if float(fix.norm()) > limit:
                fix = fix * (limit / float(fix.norm()))
                counted["capped_corrections"] += 1
            u = u - fix
            counted["corrected_updates"] += 1
        step += (n / total) * u
        for k in rest:
            others[k] = others.get(k, 0.0) + (n / total) * update[k]
        secants.observe(cid, w_t, raw, lr)
    return step, others
