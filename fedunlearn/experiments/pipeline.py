"""The pieces every experiment kind is built from, so that each kind is a thin driver.

- `MethodsSection`: experiment.methods and the [methods.<name>] sections, validated when the
  config is built, the reference (`retrain`) first (every other method is compared with it);
- `make_task`: the UnlearnTask for one deletion request;
- `run_method`: one method on one task the same way in every kind: its `prepare` hook
  (untimed), the timed `unlearn`, its `diagnose` hook (untimed), the checkpoint, the row;
- `cached` / `load_cached` / `store`: results checkpointed by the config that produced them,
  so a stopped run resumes;
- `Reference` / `evaluate_against_reference`: the one evaluation, retrain first, every other
  model compared with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ClassVar, Iterable

import numpy as np

from fedunlearn import checkpoint
from fedunlearn.config import build
from fedunlearn.contract import MethodResult, as_result, hook
from fedunlearn.registry import Registry

log = logging.getLogger("fedunlearn")
FORMAT = 2  # checkpoints written by another layout are rebuilt, never misread


def load_cached(path: Path) -> Any | None:
    """What an earlier run stored at `path`, or None (missing, corrupted or of another layout)."""
    hit = checkpoint.load_or_none(path)
    if hit is None or hit[1].get("format") != FORMAT:
        return None
    log.info("reusing checkpoint %s", Path(path).name)
    return hit[0]


def store(path: Path, value: Any) -> None:
    checkpoint.save(path, value, {"format": FORMAT})


def cached(path: Path, work: Callable[[], Any]) -> Any:
    """work(), or its value from an earlier, interrupted run."""
    value = load_cached(path)
    if value is None:
        value = work()
        store(path, value)
    return value


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = work()
    return value, time.perf_counter() - start


class MethodsSection:
    """Mixin for an experiment Config with `experiment.methods` and a `methods` dict of
    [methods.<name>] sections; `registry` is the method registry of the kind, `reference` the
    method every other one is compared with."""

    registry: ClassVar[Registry]
    reference: ClassVar[str] = "retrain"

    def __post_init__(self):
        self.check_methods()

    def check_methods(self) -> None:
        """Every name and every section is checked when the config is built, before anything trains."""
        for name in [*self.experiment.methods, *self.methods]:
            self.registry.check(name)
        for name in self.method_names():
            self.method_config(name)

    def method_names(self) -> list[str]:
        """The reference always runs first: every other method is compared with it."""
        return [self.reference] + [m for m in self.experiment.methods if m != self.reference]

    def method(self, name: str) -> ModuleType:
        return self.registry.load(name)

    def method_config(self, name: str):
        return build(self.method(name).Config, self.methods.get(name, {}), f"methods.{name}")


def make_task(train, forget_idx: np.ndarray, original, *, gone: np.ndarray | None = None, **fields):
    """The UnlearnTask of one request: forget `forget_idx` of `train` once the positions `gone`
    (default: forget_idx; earlier requests' positions too in continual unlearning) are removed.
    `fields` are UnlearnTask's remaining fields (train_cfg, make_model, num_classes, device, ...)."""
    from fedunlearn.data import complement
    from fedunlearn.unlearn.base import UnlearnTask

    forget_idx = np.asarray(forget_idx, dtype=np.int64)
    retain_idx = complement(len(train), forget_idx if gone is None else gone)
    return UnlearnTask(original=original, retain=train.subset(retain_idx), forget=train.subset(forget_idx),
                       retain_idx=retain_idx, forget_idx=forget_idx, train_size=len(train), **fields)


def run_method(method: ModuleType, task, cfg, path: Path | None = None, *, prepare: bool = True,
               cpu: bool = False, measure: Callable[[Any], dict] | None = None,
               diagnose: bool = True) -> tuple[Any, dict]:
    """One method on one task of any kind; returns (model, or FedResult for a federated method; row).

    The row is {"wall_s", "cpu_s" (when `cpu`), prepare's stats and "prepare_s", `measure(result)`,
    the method's stats, diagnose's stats}. With `path`, a finished run is reused from its
    checkpoint. `prepare = False` when the kind ran the prepare hook itself (once per seed);
    `diagnose = False` skips the diagnose hook (an audit judges against retraining instead).
    """
    if path is not None:
        hit = load_cached(path)
        if hit is not None:
            return hit
    from fedunlearn.cluster.fanout import task_cpu_seconds

    stats: dict = {}
    prep = hook(method, "prepare") if prepare else None
    if prep is not None:
        # Training-time bookkeeping (SISA's shards, DeltaGrad's trajectory): not unlearning time.
        start = time.perf_counter()
        stats.update(prep(task, cfg))
        stats["prepare_s"] = time.perf_counter() - start
    start, cpu_start, nested = time.perf_counter(), time.process_time(), task_cpu_seconds()
    result = as_result(method.unlearn(task, cfg))
    wall_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start + task_cpu_seconds() - nested  # this process's and its tasks'
    model = result.model if isinstance(result, MethodResult) else result
    row = {"wall_s": wall_s, **({"cpu_s": cpu_s} if cpu else {}), **stats, **(measure(result) if measure else {}),
           **result.stats}
    check = hook(method, "diagnose") if diagnose else None
    if check is not None:
        # Numbers that need data the method must not use (e.g. the exact update): untimed.
        row.update(check(task, cfg, model))
    if path is not None:
        store(path, (model, row))
    return model, row


def run_benchmark(method: ModuleType, task, cfg, row: dict, path: Path) -> dict:
    """The method's benchmark hook (alone on the cluster), cached; {} for a method without one."""
    bench = hook(method, "benchmark")
    if bench is None:
        return {}
    return cached(path, lambda: dict(bench(task, cfg, {k: v for k, v in row.items() if k != "method"})))


@dataclass
class Reference:
    """The reference model (retrain) as evaluated, against which every other model is judged."""

    row: dict
    outputs: Any
    model: Any
    wall_s: float

    def judge(self, row: dict, outputs, model) -> dict:
        from fedunlearn.metrics import compare_to_reference

        return compare_to_reference(row, outputs, model, self.row, self.outputs, self.model, self.wall_s)


def evaluate_against_reference(entries: Iterable[tuple[str, Any, dict]], splits, device, eval_cfg, seed: int,
                               rename: dict[str, str] | None = None) -> list[tuple[dict, Any]]:
    """Evaluate each (name, model, fields); the first entry is the reference (retrain) and every
    entry, the reference included, is compared with it. Returns [(row, outputs)] in entry order,
    row = {"method", metrics (keys renamed by `rename`), fields, comparisons}."""
    from fedunlearn.metrics import evaluate

    judged, ref = [], None
    for name, model, fields in entries:
        metrics, outputs = evaluate(model, splits, device, eval_cfg, seed=seed)
        for old, new in (rename or {}).items():
            if old in metrics:
                metrics[new] = metrics.pop(old)
        row = {"method": name, **metrics, **fields}
        if ref is None:
            ref = Reference(dict(row), outputs, model, row["wall_s"])
        judged.append((ref.judge(row, outputs, model), outputs))
    return judged
