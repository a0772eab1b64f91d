"""The audit's models as Ray tasks: N originals, two retrain ensembles, each method on each original.

Every member is an independent training, so each is one task (a GPU fraction where the
cluster has GPUs, chosen by fedunlearn.cluster.choose_resources). A task returns what the
audit needs and nothing else: the model's weights, its wall time, the method's stats, the
one evaluation's row and its logits on the forget, retain, validation and test samples.
`member` is plain PyTorch and runs without Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.metrics.evaluate import EvalConfig, Splits, evaluate
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, seed_everything, train

ORIGINAL, RETRAIN_A, RETRAIN_B = "original", "retrain_a", "retrain_b"


@dataclass
class Shared:
    """What every member of one forget set's audit reads (put into Ray's object store once)."""

    model_cfg: ModelConfig
    input_shape: tuple[int, ...]
    num_classes: int
    train_cfg: TrainConfig
    eval_cfg: EvalConfig
    train: ArrayDataset                 # retain + forget
    retain: ArrayDataset
    forget: ArrayDataset
    splits: Splits                      # what evaluate() and the logits are computed on
    val: ArrayDataset | None = None
    retain_idx: np.ndarray | None = None
    forget_idx: np.ndarray | None = None


@dataclass(frozen=True)
class Job:
    role: str                  # original | retrain_a | retrain_b | a method name
    index: int                 # position in its ensemble
    seed: int
    method_cfg: Any = None     # methods only
    evaluate: bool = True      # originals' first pass only trains (the forget set is not chosen yet)


@dataclass
class Member:
    role: str
    index: int
    state: dict
    wall_s: float
    stats: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: str = ""          # why a method does not apply here (e.g. a class-only method, sample forgetting)


def fresh_model(shared: Shared, seed: int) -> nn.Module:
    seed_everything(seed)
    return build_model(shared.model_cfg, shared.input_shape, shared.num_classes)


@torch.no_grad()
def logits_on(model: nn.Module, data: ArrayDataset, device, batch_size: int = 1024) -> torch.Tensor:
    model.to(device).eval()
    out = [model(data.x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(data), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def member(job: Job, shared: Shared, original_state: dict | None = None) -> Member:
    """Train (or unlearn) one model and probe it. Originals train on `train`, retrains on `retain`."""
    from fedunlearn.cluster.ray_env import worker_device

    device = worker_device()
    stats: dict = {}
    if job.role == ORIGINAL and original_state is not None:
        model, wall = fresh_model(shared, job.seed), float("nan")  # already trained: probe only
        model.load_state_dict(original_state)
    elif job.role in (ORIGINAL, RETRAIN_A, RETRAIN_B):
        data = shared.train if job.role == ORIGINAL else shared.retain
        model = fresh_model(shared, job.seed)
        start = time.perf_counter()
        train(model, data, shared.train_cfg, device, seed=job.seed, desc=job.role, progress=False)
        wall = time.perf_counter() - start
    else:
        from fedunlearn.errors import ConfigError

        try:
            model, wall, stats = _unlearn(job, shared, original_state, device)
        except ConfigError as err:  # the method refuses this forget set: one row says so, the audit goes on
            return Member(job.role, job.index, {}, float("nan"), skipped=str(err))
        except Exception as err:  # noqa: BLE001 -- one broken method must not cost every other row
            return Member(job.role, job.index, {}, float("nan"), skipped=f"failed: {type(err).__name__}: {err}")
    result = Member(job.role, job.index, {k: v.detach().cpu() for k, v in model.state_dict().items()}, wall, stats)
    if job.evaluate:
        result.row, _ = evaluate(model, shared.splits, device, shared.eval_cfg, seed=job.seed)
        sets = {"forget": shared.splits.forget, "retain": shared.splits.retain, "test": shared.splits.test}
        if shared.val is not None:
            sets["val"] = shared.val
        result.logits = {name: logits_on(model, data, device) for name, data in sets.items()}
    return result


def _unlearn(job: Job, shared: Shared, original_state: dict, device):
    import tempfile

    from fedunlearn.experiments.pipeline import run_method
    from fedunlearn.unlearn import METHODS, UnlearnTask

    original = fresh_model(shared, job.seed)
    original.load_state_dict(original_state)
    with tempfile.TemporaryDirectory(prefix=f"audit-{job.role}-") as workdir:
        task = UnlearnTask(original=original.to(device), retain=shared.retain, forget=shared.forget,
                           train_cfg=shared.train_cfg, make_model=lambda: fresh_model(shared, job.seed),
                           num_classes=shared.num_classes, device=device, seed=job.seed,
                           retain_idx=shared.retain_idx, forget_idx=shared.forget_idx, workdir=workdir, val=shared.val)
        model, row = run_method(METHODS.get(job.role), task, job.method_cfg)
    stats = {k: v for k, v in row.items() if k != "wall_s" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return model, row["wall_s"], stats


def run_members(jobs: list[Job], shared: Shared, original_states: dict[int, Any], cluster_cfg, progress: bool = False,
                desc: str = "audit") -> list[Member]:
    """Every job as a Ray task (fedunlearn.cluster.fan_out); `original_states[i]` is original i's weights
    (or an ObjectRef to them) for the jobs that start from it."""
    import ray

    from fedunlearn.cluster import current_resources, fan_out

    shared_ref = ray.put(shared)
    calls = [(job, shared_ref, original_states.get(job.index) if job.role not in (RETRAIN_A, RETRAIN_B) else None)
             for job in jobs]
    return fan_out(member, calls, cluster_cfg, resources=current_resources(cluster_cfg), desc=desc, progress=progress)
