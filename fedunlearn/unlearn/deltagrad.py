"""DeltaGrad (Wu, Dobriban, Davidson, ICML 2020): replay training without the forget set from the cached trajectory.

Training is recorded once (`prepare`, run at training time and cached in task.workdir): the
original recipe is replayed from the model's initialisation with the same seed, so the batches
and weights are those of the original, and every step's weights w_t, batch gradient g_t and
batch indices are kept. Unlearning replays the same steps (same optimizer, momentum, weight
decay and schedule) on the same batches minus the forget samples, starting from the same
initialisation. At the first `burn_in` steps and every `period`-th step after, the retained
batch gradient at the new weights is computed exactly, and the pair (w^I_t - w_t, g(w^I_t) - g_t)
goes into an L-BFGS history. At all other steps the full-batch gradient is approximated as
g_t + B (w^I_t - w_t) with B the L-BFGS compact Hessian approximation, and only the forget
samples' gradients are computed exactly and subtracted:
    g_retained = (|batch| * (g_t + B dw) - sum_forget-in-batch grad) / |retained in batch|.
The saving is that most steps touch only the forget samples. The method assumes per-sample
losses (no BatchNorm batch statistics); its theory is for strongly convex objectives and small
deletions. On deep nets the quasi-Newton model can stop predicting the gradient, and the error
then grows along the trajectory: a safeguard (`max_gradient_error`) falls back to exact steps
while that lasts, trading speed for accuracy; fallbacks and the median error are reported.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector

from fedunlearn import checkpoint
from fedunlearn.config import check_range, config_hash
from fedunlearn.errors import ConfigError
from fedunlearn.lbfgs import LBFGS
from fedunlearn.training import make_optimizer, seed_everything
from fedunlearn.unlearn.base import Stats, UnlearnTask

log = logging.getLogger("fedunlearn")
# Safeguard: at an approximate step, a correction ||B dw|| beyond twice the gradient change measured
# at the last exact step means dw has left the region where B was fitted; that step is taken exactly.
MAX_CORRECTION_GROWTH = 2.0


@dataclass(frozen=True)
class Config:
    period: int = 5    # T0: exact retained gradients every `period` steps
    burn_in: int = 10  # j0: the first steps are all exact
    history: int = 2   # m: L-BFGS pairs kept
    # Safeguard (ours, not the paper's): at each exact step the L-BFGS prediction g_t + B dw of the batch
    # gradient is checked against the exact one; above this error (relative to the gradient's norm) B is
    # not trusted and steps stay exact until it predicts well again (large deletions, non-convex nets).
    # inf = the paper's DeltaGrad, which never falls back.
    max_gradient_error: float = 0.1

    def __post_init__(self):
        check_range("period", self.period, 1)
        check_range("burn_in", self.burn_in, 0)
        check_range("history", self.history, 1)
        check_range("max_gradient_error", self.max_gradient_error, 0.0)


def _full_training_set(task: UnlearnTask):
    """The original training set in its original order, rebuilt from the retain / forget positions."""
    if task.retain_idx is None or task.forget_idx is None:
        raise ConfigError("deltagrad needs task.retain_idx and task.forget_idx (positions in the original training "
                          "set) to replay the original batches")
    n = len(task.retain_idx) + len(task.forget_idx)
    x = torch.empty((n, *task.retain.x.shape[1:]), dtype=task.retain.x.dtype)
    y = torch.empty(n, dtype=torch.long)
    for idx, part in ((task.retain_idx, task.retain), (task.forget_idx, task.forget)):
        x[torch.as_tensor(idx)], y[torch.as_tensor(idx)] = part.x, part.y
    return x, y


def _batches(n: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """The index batches `training.train` draws: its DataLoader's sampler depends only on n and the seed."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.utils.data.DataLoader(torch.arange(n), batch_size=batch_size, shuffle=True, generator=gen)
    return [idx for _ in range(epochs) for idx in order]


def _trajectory_path(task: UnlearnTask, y: torch.Tensor) -> Path:
    init = parameters_to_vector(task.make_model().parameters()).detach()
    digest = hashlib.sha256(init.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:12]
    return Path(task.workdir) / f"deltagrad-{config_hash([task.train_cfg, task.seed])}-{digest}"


def prepare(task: UnlearnTask, cfg: Config = Config()) -> dict:
    """Record (or load) the original training trajectory; returns numbers worth reporting."""
    return _trajectory(task)[1]


def _trajectory(task: UnlearnTask):
    x, y = _full_training_set(task)
    path = _trajectory_path(task, y) if task.workdir else None
    if path is not None and checkpoint.exists(path):
        return checkpoint.load(path)
    start = time.perf_counter()
    recipe, device = task.train_cfg, task.device
    model = task.make_model().to(device).train()
    seed_everything(task.seed)
    batches = _batches(len(y), recipe.batch_size, recipe.epochs, task.seed)
    opt, sched = make_optimizer(model, recipe, len(batches))
    size = sum(p.numel() for p in model.parameters())
    weights, grads = torch.empty(len(batches), size), torch.empty(len(batches), size)
    for t, idx in enumerate(batches):
        weights[t] = parameters_to_vector(model.parameters()).detach().cpu()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx].to(device)), y[idx].to(device)).backward()
        grads[t] = parameters_to_vector([p.grad for p in model.parameters()]).cpu()
        opt.step()
        sched.step()
    final = parameters_to_vector(model.parameters()).detach().cpu()
    gap = float((final - parameters_to_vector(task.original.parameters()).detach().cpu()).norm())
    if gap > 1e-3 * float(final.norm()):
        log.warning("deltagrad: the recorded training does not reproduce the original model (L2 gap %.3g); "
                    "was it trained with task.train_cfg and seed task.seed?", gap)
    trajectory = {"weights": weights, "grads": grads, "batches": batches}
    info = {"record_s": time.perf_counter() - start, "replay_l2_to_original": gap,
            "trajectory_mb": 2 * weights.numel() * 4 / 2**20, "steps": len(batches)}
    if path is not None:
        checkpoint.save(path, trajectory, info)
    return trajectory, info


def _grad_sum(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy gradient over (x, y), flattened; zero for an empty batch."""
    params = list(model.parameters())
    if len(y) == 0:
        return torch.zeros(sum(p.numel() for p in params), device=y.device)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), params)
    return parameters_to_vector(grads)


def _set_grads(model, flat: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    trajectory, info = _trajectory(task)  # a load when `prepare` already ran at training time
    x, y = _full_training_set(task)
    removed = torch.zeros(len(y), dtype=torch.bool)
    removed[torch.as_tensor(task.forget_idx)] = True
    device = task.device
    model = task.make_model().to(device).train()
    opt, sched = make_optimizer(model, task.train_cfg, len(trajectory["batches"]))
    pairs = LBFGS(cfg.history)
    exact = approx = fallbacks = 0
    safeguard = math.isfinite(cfg.max_gradient_error)
    trusted, last_change, errors = False, 0.0, []
    for t, idx in enumerate(trajectory["batches"]):
        gone = removed[idx]
        xb, yb, gone = x[idx].to(device), y[idx].to(device), gone.to(device)
        kept = int((~gone).sum())
        if kept == 0:
            sched.step()  # nothing retained in this batch: retraining would take no step either
            continue
        w_t, g_t = trajectory["weights"][t].to(device), trajectory["grads"][t].to(device)
        dw = parameters_to_vector(model.parameters()).detach() - w_t
        gone_sum = _grad_sum(model, xb[gone], yb[gone])  # exact at every step: the forget samples are few
        scheduled = t < cfg.burn_in or (t - cfg.burn_in) % cfg.period == 0 or not pairs
        approximate = not scheduled and (trusted or not safeguard)
        if approximate:
            correction = pairs.product(dw)
            # Written so that a non-finite correction fails the test too.
            if safeguard and not bool(correction.norm() <= MAX_CORRECTION_GROWTH * last_change):
                approximate = trusted = False
        if approximate:
            grad = (len(idx) * (g_t + correction) - gone_sum) / kept
            approx += 1
        else:
            fallbacks += not scheduled
            keep_sum = _grad_sum(model, xb[~gone], yb[~gone])
            dg = (keep_sum + gone_sum) / len(idx) - g_t
            if pairs:
                full_norm = (g_t + dg).norm().clamp_min(1e-12)
                errors.append(float((dg - pairs.product(dw)).norm() / full_norm))
                trusted = errors[-1] <= cfg.max_gradient_error
            last_change = float(dg.norm())
            pairs.add_if_curved(dw, dg)
            grad = keep_sum / kept
            exact += 1
        _set_grads(model, grad.detach())
        opt.step()
        sched.step()
    stats = Stats(exact_steps=exact, approx_steps=approx, fallback_exact_steps=fallbacks,
                  gradient_rel_error=float(torch.tensor(errors).median()) if errors else float("nan"), **info)
    return model.eval(), stats
