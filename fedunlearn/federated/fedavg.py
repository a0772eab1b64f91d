"""FedAvg's arithmetic on state dicts: plain tensor functions, no framework.

Only floating-point entries are averaged or differenced; integer buffers (BatchNorm's
num_batches_tracked) are carried over from the model the clients started from.
Paper: McMahan et al., Communication-Efficient Learning of Deep Networks from Decentralized
Data, AISTATS 2017.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("fedunlearn")

State = dict[str, torch.Tensor]  # a model's state dict: the one definition


def is_float(t: torch.Tensor) -> bool:
    return torch.is_floating_point(t)


def copy_state(state: State) -> State:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def delta(new: State, old: State) -> State:
    """new - old on the floating-point entries."""
    return {k: (new[k].detach().cpu() - old[k].detach().cpu()) for k in old if is_float(old[k])}


def add(state: State, update: State, scale: float = 1.0) -> State:
    """state + scale * update; entries missing from `update` are copied."""
    out = copy_state(state)
    for k, v in update.items():
        out[k] = out[k] + scale * v
    return out


def weighted_sum(updates: Iterable[tuple[State, int]], total: int | None = None) -> State:
    """sum_i n_i / total * u_i, with total = sum_i n_i by default (FedAvg's weighting).

    With `total` given, `updates` may be a generator: it is consumed one update at a time, so
    updates read lazily from a disk store are never all in memory together."""
    if total is None:
        updates = list(updates)
        total = sum(n for _, n in updates)
    out: State = {}
    for update, n in updates:
        for k, v in update.items():
            out[k] = out[k] + v * (n / total) if k in out else v * (n / total)
    return out


def apply_updates(state: State, updates: list[tuple[State, int]]) -> State:
    """One FedAvg step: the sent model plus the sample-weighted mean of the client updates."""
    return add(state, weighted_sum(updates))


def norm(update: State) -> float:
    return float(sum(float((v.double() ** 2).sum()) for v in update.values()) ** 0.5)


def l2_project(state: State, center: State, radius: float) -> State:
    """Project `state` onto the L2 ball of `radius` around `center` (floating-point entries)."""
    diff = delta(state, center)
    dist = norm(diff)
    if dist <= radius or dist == 0.0:
        return state
    return add(center, diff, radius / dist)


def state_nbytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


@dataclass
class RoundResult:
    state: State                                  # the FedAvg aggregate (the new global model)
    updates: dict[int, tuple[State, int]]         # client id -> (delta from the sent model, num_samples)
    failed: list[int] = field(default_factory=list)
    metrics: dict[int, dict] = field(default_factory=dict)


def aggregate_replies(sent: State, replies: dict[int, Any]) -> RoundResult:
    """FedAvg over the successful replies; failures are logged and skipped."""
    updates, failed, metrics = {}, [], {}
    for cid, reply in sorted(replies.items()):
        if isinstance(reply, BaseException):
            log.warning("client %d failed this round and is left out of the aggregate: %s", cid, reply)
            failed.append(cid)
            continue
        local, num, more = reply
        updates[cid] = (delta(local, sent), int(num))
        metrics[cid] = more
    if not updates:
        raise RuntimeError(f"every client failed this round ({failed}); see the warnings above")
    return RoundResult(apply_updates(sent, list(updates.values())), updates, failed, metrics)
