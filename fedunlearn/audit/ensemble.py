"""The audit's models as Ray tasks: N originals, two retrain ensembles, each method on each original.

Every member is an independent training, so each is one task (a GPU fraction where the
cluster has GPUs, chosen by fedunlearn.cluster.choose_resources). A task returns what the
audit needs and nothing else: the model's weights, its wall time, the method's stats, the
one evaluation's row and its logits on the forget, retain, validation and test samples.
`member` is plain PyTorch and runs without Ray.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.metrics.evaluate import EvalConfig, Outputs, Splits, score_outputs
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, seed_everything, train

ORIGINAL, RETRAIN_A, RETRAIN_B = "original", "retrain_a", "retrain_b"
log = logging.getLogger("fedunlearn")


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
    diagnose: bool = False              # methods' diagnose hooks (untimed comparisons with exact solutions)


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
def logits_on(model: nn.Module, data: ArrayDataset, device, batch_size: int = 0) -> torch.Tensor:
    """Logits in data order. On CPU small batches stay in cache: a CNN's forward pass on 1,024
    images at once is ~5x slower per image than on 128 (pooling over activations that no longer fit)."""
    device = torch.device(device)
    batch_size = batch_size or (1024 if device.type == "cuda" else 128)
    model.to(device).eval()
    out = [model(data.x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(data), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def outputs_of(logits: dict[str, torch.Tensor]) -> Outputs:
    """The softmax outputs every metric reads, from a member's logits (no second forward pass)."""
    soft = lambda part: torch.softmax(logits[part].double(), 1).float()  # noqa: E731
    return Outputs(soft("retain"), soft("forget"), soft("test"), {})


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
        sets = {"forget": shared.splits.forget, "retain": shared.splits.retain, "test": shared.splits.test}
        if shared.val is not None:
            sets["val"] = shared.val
        result.logits = {name: logits_on(model, data, device) for name, data in sets.items()}
        result.row = score_outputs(outputs_of(result.logits), shared.splits, shared.eval_cfg, seed=job.seed)
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
        model, row = run_method(METHODS.get(job.role), task, job.method_cfg, diagnose=shared.diagnose)
    stats = {k: v for k, v in row.items() if k != "wall_s" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return model, row["wall_s"], stats


def member_path(checkpoints: str | Path, key: str, job: Job) -> Path:
    """Where a finished member is stored: keyed by `key` (what every member of the call shares:
    code, data, model, training recipe, forget set) and the job (role, index, seed, method config)."""
    from fedunlearn.config import config_hash

    return Path(checkpoints) / f"audit-{job.role}-{job.index}-{config_hash([key, job])}"


def _stored(path: Path) -> Member | None:
    from fedunlearn import checkpoint
    from fedunlearn.experiments.pipeline import FORMAT

    hit = checkpoint.load_or_none(path)  # a damaged file is reported and run again
    return hit[0] if hit is not None and hit[1].get("format") == FORMAT else None


def run_members(jobs: list[Job], shared: Shared, original_states: dict[int, Any], cluster_cfg, progress: bool = False,
                desc: str = "audit", checkpoints: str | Path | None = None, key: str = "") -> list[Member]:
    """Every job as a Ray task (fedunlearn.cluster.fan_out); `original_states[i]` is original i's weights
    (or an ObjectRef to them) for the jobs that start from it.

    With `checkpoints`, each member is stored as it finishes and members stored by an earlier
    (interrupted) call with the same `key` are loaded instead of run."""
    import ray

    from fedunlearn.cluster import current_resources, fan_out
    from fedunlearn.experiments.pipeline import store

    paths = [member_path(checkpoints, key, job) for job in jobs] if checkpoints is not None else []
    results: list[Member | None] = [_stored(path) for path in paths] if paths else [None] * len(jobs)
    todo = [i for i, hit in enumerate(results) if hit is None]
    if len(todo) < len(jobs):
        log.info("%s: %d of %d members resumed from checkpoints", desc, len(jobs) - len(todo), len(jobs))
    if not todo:
        return results
    shared_ref = ray.put(shared)
    calls = [(jobs[i], shared_ref, original_states.get(jobs[i].index) if jobs[i].role not in (RETRAIN_A, RETRAIN_B) else None)
             for i in todo]

    def keep(k: int, result: Member) -> None:
        if paths:
            store(paths[todo[k]], result)  # at once: an interrupted audit loses only the members still running

    for i, result in zip(todo, fan_out(member, calls, cluster_cfg, resources=current_resources(cluster_cfg), desc=desc,
                                       progress=progress, on_result=keep)):
        results[i] = result
    return results
