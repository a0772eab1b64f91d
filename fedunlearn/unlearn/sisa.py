"""SISA (Bourtoule et al. 2021, "Machine Unlearning"): only the shards that held the samples retrain.

Shards train as parallel Ray tasks with a checkpoint after every slice (fedunlearn.unlearn.
sisa_shards has the bookkeeping). `fit(alive)` makes sure every shard has a model for exactly
the samples still alive, training only what no valid checkpoint covers, and returns the
aggregate. So `prepare` (the initial training on the whole training set, before any request,
untimed) and `unlearn` (the deletion, timed) are the same call on different alive sets, a
repeated request costs nothing, and a batch of requests is one call on the union.

Stats per request: the shards and slices retrained, and the speedups the slice sizes predict
(samples processed; shards on W workers in parallel, retraining on one): vs full SISA
retraining and vs single-model retraining with the original recipe. `benchmark` measures full
SISA retraining on W workers and on one, so the report can set measured against predicted.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fedunlearn import checkpoint
from fedunlearn.cluster import ClusterConfig, current_resources, fan_out, ray_session, worker_device
from fedunlearn.config import check_range, config_hash
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.errors import ConfigError
from fedunlearn.unlearn.base import Stats, UnlearnTask
from fedunlearn.unlearn.sisa_shards import (ShardEnsemble, alive_plan, fingerprints, local_slices, make_plan, makespan,
                                            prefix_keys, resume_point, shard_work, train_shard)


@dataclass(frozen=True)
class Config:
    shards: int = 4
    slices: int = 4
    epochs_per_slice: int = 5        # epochs on the cumulative data each time a slice is added
    aggregate: Literal["mean", "vote"] = "mean"  # mean softmax, or majority vote of the shard models
    compare_one_worker: bool = True  # benchmark: full SISA retraining on all workers and on one
    benchmark_repeats: int = 2       # interleaved runs of each; the fastest counts (least disturbed)

    def __post_init__(self):
        check_range("shards", self.shards, 1)
        check_range("slices", self.slices, 1)
        check_range("epochs_per_slice", self.epochs_per_slice, 1)
        check_range("benchmark_repeats", self.benchmark_repeats, 1)


def _train_shard_task(data, shard_slices, keys, start, shard, make_model, recipe, seed, ckpt_dir):
    return train_shard(data, shard_slices, keys, start, shard, make_model, recipe, seed, ckpt_dir, worker_device())


def fit(data: ArrayDataset, alive: np.ndarray, cfg: Config, task: UnlearnTask, ckpt_dir: str | Path,
        max_parallel: int = 0) -> tuple[ShardEnsemble, Stats]:
    """Shard models for exactly the `alive` positions of `data`, training only what is missing."""
    recipe = dataclasses.replace(task.train_cfg, epochs=cfg.epochs_per_slice)
    plan = alive_plan(make_plan(len(data), cfg.shards, cfg.slices, task.seed), alive)
    base = config_hash([recipe, cfg.shards, cfg.slices, task.seed, str(task.make_model())])
    prints = fingerprints(data)
    keys = [prefix_keys(prints, shard, base, s) for s, shard in enumerate(plan)]
    starts = [resume_point(ckpt_dir, k) for k in keys]
    jobs = [s for s in range(cfg.shards) if starts[s] < cfg.slices]
    cluster = task.cluster or ClusterConfig()
    with ray_session(cluster):
        res = current_resources(cluster)
        workers = min(res.slots, max_parallel or res.slots)
        calls = []
        for s in jobs:  # each task gets only its own shard's samples
            positions, slices = local_slices(plan[s])
            calls.append((data.subset(positions), slices, keys[s], starts[s], s, task.make_model, recipe, task.seed,
                          str(ckpt_dir)))
        trained = fan_out(_train_shard_task, calls, cluster, res, max_parallel=workers)
    members = []
    for s, shard in enumerate(plan):
        if sum(len(part) for part in shard):  # a shard whose samples were all deleted has no model
            model = task.make_model()
            model.load_state_dict(checkpoint.load(Path(ckpt_dir) / keys[s][-1])[0])
            members.append(model.eval())
    done = [shard_work(plan[s], starts[s], recipe.epochs) for s in jobs]
    full = [shard_work(shard, 0, recipe.epochs) for shard in plan]
    critical = makespan(done, workers) if jobs else 0.0
    stats = Stats(shards_retrained=len(jobs), slices_retrained=sum(cfg.slices - starts[s] for s in jobs),
                  retrained=" ".join(f"s{s}:r{starts[s]}-{cfg.slices - 1}" for s in jobs) or "none",
                  work_samples=sum(done), critical_path_samples=critical, workers=workers,
                  slowest_shard_s=max((t["seconds"] for t in trained), default=0.0),
                  predicted_speedup_vs_full_sisa=makespan(full, workers) / critical if critical else float("inf"),
                  predicted_parallel_speedup=makespan(full, 1) / makespan(full, workers))
    return ShardEnsemble(members, cfg.aggregate), stats


def _positions(task: UnlearnTask, with_forget: bool) -> tuple[ArrayDataset, np.ndarray]:
    """The training set laid out by original position (samples deleted earlier are zeros, never alive)."""
    if task.retain_idx is None or task.forget_idx is None:
        raise ConfigError("SISA needs the training-set positions of the retain and forget samples "
                          "(UnlearnTask.retain_idx / forget_idx); the centralized and cluster runners set them")
    if not task.workdir:
        raise ConfigError("SISA needs UnlearnTask.workdir, a folder for its shard checkpoints")
    n = task.train_size or len(task.retain_idx) + len(task.forget_idx)
    x = torch.zeros((n, *task.retain.x.shape[1:]), dtype=task.retain.x.dtype)
    y = torch.zeros(n, dtype=torch.long)
    x[task.retain_idx], y[task.retain_idx] = task.retain.x, task.retain.y
    alive = np.asarray(task.retain_idx)
    if with_forget:
        x[task.forget_idx], y[task.forget_idx] = task.forget.x, task.forget.y
        alive = np.union1d(alive, task.forget_idx)
    return ArrayDataset(x, y), alive


def prepare(task: UnlearnTask, cfg: Config = Config()) -> Stats:
    """The initial SISA training on every sample (before the request): not part of the unlearning time."""
    data, alive = _positions(task, with_forget=True)
    start = time.perf_counter()
    _, stats = fit(data, alive, cfg, task, Path(task.workdir) / "sisa")
    return Stats(prepare_s=time.perf_counter() - start, prepare_slices=stats["slices_retrained"])


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    """Delete task.forget_idx: retrain the affected shards from their last unaffected slice."""
    data, alive = _positions(task, with_forget=False)
    model, stats = fit(data, alive, cfg, task, Path(task.workdir) / "sisa")
    # Single-model retraining: the original recipe on one worker, in samples processed.
    retrain_work = task.train_cfg.epochs * len(alive)
    crit, work = stats["critical_path_samples"], stats["work_samples"]
    stats["predicted_speedup"] = retrain_work / crit if crit else float("inf")       # wall: shards in parallel
    stats["predicted_cpu_speedup"] = retrain_work / work if work else float("inf")   # CPU: all the work
    return model, stats


def benchmark(task: UnlearnTask, cfg: Config, result: dict) -> Stats:
    """Full SISA retraining on the retain set, on all workers and on one (fresh folders, nothing reused).

    `result` is this method's timed request (wall_s and its stats), set against the measurements.
    """
    data, alive = _positions(task, with_forget=False)
    scratch = Path(task.workdir) / "sisa-benchmark"

    def timed_full_retraining(max_parallel: int) -> tuple[float, Stats]:
        shutil.rmtree(scratch, ignore_errors=True)
        start = time.perf_counter()
        _, stats = fit(data, alive, cfg, task, scratch, max_parallel=max_parallel)
        seconds = time.perf_counter() - start
        shutil.rmtree(scratch, ignore_errors=True)
        return seconds, stats

    runs: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(cfg.benchmark_repeats):  # interleaved, so a busy spell of the machine hits both
        for limit in (0, 1) if cfg.compare_one_worker else (0,):
            seconds, stats = timed_full_retraining(limit)
            runs[limit].append(seconds)
            if limit == 0:
                full = stats
    best = min(runs[0])
    out = Stats(full_sisa_s=best, full_sisa_workers=full["workers"], speedup_vs_full_sisa=best / result["wall_s"],
                benchmark_repeats=cfg.benchmark_repeats)
    out["vs_full_sisa_of_predicted"] = out["speedup_vs_full_sisa"] / result["predicted_speedup_vs_full_sisa"]
    if cfg.compare_one_worker:
        out["full_sisa_1worker_s"] = min(runs[1])
        out["parallel_speedup"] = out["full_sisa_1worker_s"] / best
        out["predicted_parallel_speedup"] = full["predicted_parallel_speedup"]
    return out
