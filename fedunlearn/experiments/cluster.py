"""Methods x seeds x forget requests as parallel Ray tasks, with mean and std over seeds.

The flow:
1. per seed, the data and the original model (one Ray task per seed, checkpointed);
2. `prepare` hooks on the whole cluster, untimed (SISA's initial shard training);
3. the grid: each (method, seed, forget spec) is one Ray task on its resource slice; it sends
   the spec's requests one after another (several = continual unlearning), timing each
   `unlearn` call, and is checkpointed as soon as it finishes;
4. `benchmark` hooks, each alone on the cluster (parallel run against one worker);
5. on the driver: the one evaluation after every request, the comparison with `retrain`
   (same recipe as the original), mean and std over seeds, report.json / report.md / plots.
A stopped run resumes from its checkpoints (OUT/checkpoints, OUT being --out).
"""

from __future__ import annotations

import functools
import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedunlearn.audit.config import AuditConfig
from fedunlearn.cluster import ClusterConfig, current_resources, fan_out, ray_session, warm_up, worker_device
from fedunlearn.config import check_range, config_hash
from fedunlearn.data import DataConfig, ForgetConfig, complement, load_dataset, select_forget
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.errors import ConfigError
from fedunlearn.experiments.cluster_report import write_cluster_report
from fedunlearn.experiments.pipeline import (MethodsSection, cached, load_cached, make_task, run_benchmark, run_method,
                                             store)
from fedunlearn.metrics import EvalConfig
from fedunlearn.models import ModelConfig, fresh_model
from fedunlearn.training import TrainConfig, get_device, train
from fedunlearn.contract import hook
from fedunlearn.unlearn import METHODS, UnlearnTask

log = logging.getLogger("fedunlearn")


@dataclass(frozen=True)
class ForgetSpec(ForgetConfig):
    name: str = ""
    requests: int = 1  # > 1: the forget set arrives as this many sequential requests (continual unlearning)

    def __post_init__(self):
        super().__post_init__()
        check_range("forget.requests", self.requests, 1)

    def label(self) -> str:
        if self.name:
            return self.name
        base = f"random-{self.fraction:g}" if self.kind == "random" else self.kind
        return base + (f"-x{self.requests}" if self.requests > 1 else "")


@dataclass(frozen=True)
class ExperimentSection:
    name: str = "cluster"
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"          # where the driver evaluates; every task picks its own device
    methods: tuple[str, ...] = ("retrain", "amun")
    forget: tuple[ForgetSpec, ...] = (ForgetSpec(),)
    parallel_runs: int = 0        # grid tasks at once; 0 = as many as the cluster holds
    retrain_each_request: bool = False  # continual specs: retrain after every request, not once after all
    benchmark: bool = True        # run the methods' parallel-vs-one-worker measurements

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("'experiment.seeds' needs at least one seed")
        if not self.forget:
            raise ValueError("'experiment.forget' needs at least one forget spec")
        labels = [spec.label() for spec in self.forget]
        if len(set(labels)) != len(labels):
            raise ValueError(f"forget specs need distinct names, got {labels}")
        check_range("experiment.parallel_runs", self.parallel_runs, 0)


@dataclass(frozen=True)
class Config(MethodsSection):
    kind: str = "cluster"
    experiment: ExperimentSection = ExperimentSection()
    cluster: ClusterConfig = ClusterConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    methods: dict = field(default_factory=dict)  # [methods.<name>] sections: that method's Config
    audit: AuditConfig = AuditConfig()  # [audit] models = N > 0: the centralized audit of these methods

    registry = METHODS  # MethodsSection.__post_init__ checks every listed method and section

    def __post_init__(self):
        super().__post_init__()
        if self.audit.models:
            from fedunlearn.audit.kinds import cluster_audit_config

            cluster_audit_config(self)  # an audit that cannot run fails now, not after Ray starts


@dataclass
class Seeded:
    """Everything per seed: data, forget requests per spec, the original model."""
    seed: int
    data: object
    eval_retain: ArrayDataset
    requests: dict[str, list[np.ndarray]]
    base_key: str
    make_model: object
    original: object = None
    original_times: dict = field(default_factory=dict)  # wall_s and cpu_s of its training


def _seeded(cfg: Config, seed: int) -> Seeded:
    data = load_dataset(cfg.data, seed)
    labels = data.train.y.numpy()
    requests = {}
    for spec in cfg.experiment.forget:
        chosen = select_forget(labels, spec, seed)
        if len(chosen) < spec.requests:
            raise ConfigError(f"forget spec '{spec.label()}' selects {len(chosen)} samples, "
                              f"fewer than its {spec.requests} requests")
        order = np.random.default_rng(seed + 7).permutation(chosen)
        requests[spec.label()] = [np.sort(part) for part in np.array_split(order, spec.requests)]
    # Retain accuracy on a sample that no spec forgets, so every request is judged on the same set.
    gone = np.unique(np.concatenate([np.concatenate(r) for r in requests.values()]))
    keep = complement(len(labels), gone)
    if cfg.eval.eval_retain_size and len(keep) > cfg.eval.eval_retain_size:
        keep = np.sort(np.random.default_rng(seed).choice(keep, cfg.eval.eval_retain_size, replace=False))
    make_model = functools.partial(fresh_model, cfg.model, data.input_shape, data.num_classes, seed)
    return Seeded(seed, data, data.train.subset(keep), requests,
                  config_hash([cfg.data, cfg.model, cfg.train, seed]), make_model)


def train_original(train_set: ArrayDataset, make_model, recipe: TrainConfig, seed: int):
    start, cpu = time.perf_counter(), time.process_time()
    model = train(make_model(), train_set, recipe, worker_device(), seed=seed, desc="original", progress=False)
    return model.cpu(), {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def run_unit(module: str, method_cfg, train_set: ArrayDataset, num_classes: int, original_state: dict, make_model,
             recipe: TrainConfig, seed: int, requests: list[np.ndarray], workdir: str,
             cluster: ClusterConfig) -> list[dict]:
    """One grid cell, inside a Ray task: the requests in order, each `unlearn` call timed.

    `module` is the method's module path, so a method registered at run time on the driver
    resolves in the worker too."""
    method, device = importlib.import_module(module), worker_device()
    model = make_model()
    model.load_state_dict(original_state)
    gone, results = np.array([], dtype=np.int64), []
    for forget_idx in requests:
        gone = np.union1d(gone, forget_idx)
        task = make_task(train_set, forget_idx, model, gone=gone, train_cfg=recipe, make_model=make_model,
                         num_classes=num_classes, device=device, seed=seed, workdir=workdir, cluster=cluster)
        model, row = run_method(method, task, method_cfg, prepare=False, cpu=True)
        results.append({"model": model.cpu().eval(), "row": row})
    return results


def _task(cfg: Config, s: Seeded, requests: list[np.ndarray], device, workdir: Path) -> UnlearnTask:
    """The task of the last of `requests` as the driver sees it (for prepare / benchmark hooks)."""
    forget_idx = requests[-1] if requests else np.array([], dtype=np.int64)
    gone = np.unique(np.concatenate(requests)) if requests else forget_idx
    return make_task(s.data.train, forget_idx, s.original, gone=gone, train_cfg=cfg.train, make_model=s.make_model,
                     num_classes=s.data.num_classes, device=device, seed=s.seed, workdir=str(workdir),
                     cluster=cfg.cluster)


def run(cfg: Config, out_dir: str | Path, progress: bool = True) -> dict:
    if cfg.audit.models > 0:
        from fedunlearn.audit.kinds import audit_cluster

        return audit_cluster(cfg, out_dir, progress)
    out = Path(out_dir)
    ckpt = out / "checkpoints"
    device = get_device(cfg.experiment.device)
    seeded = [_seeded(cfg, seed) for seed in cfg.experiment.seeds]
    with ray_session(cfg.cluster):
        import ray

        res = current_resources(cfg.cluster)
        log.info("Ray cluster: %s; %s", ray.cluster_resources(), res.describe())
        # The grid tasks unpickle functions of this module and of the methods they run.
        warm_up(cfg.cluster, modules=(__name__, *map(METHODS.module_name, cfg.experiment.methods)))
        train_refs = {s.seed: ray.put(s.data.train) for s in seeded}  # each seed's training set, once
        _originals(cfg, seeded, train_refs, ckpt, res, progress)
        prepared = _prepare(cfg, seeded, ckpt, device)
        results = _grid(cfg, seeded, train_refs, ckpt, res, progress)
        benches = _benchmarks(cfg, seeded, results, ckpt, device) if cfg.experiment.benchmark else {}
    return write_cluster_report(cfg, out, seeded, results, prepared, benches, device, res.describe())


def _originals(cfg: Config, seeded: list[Seeded], train_refs: dict, ckpt: Path, res, progress: bool) -> None:
    """1. The original model of every seed, one Ray task each (or its checkpoint)."""
    todo = []
    for s in seeded:
        hit = load_cached(ckpt / f"original-{s.base_key}")
        if hit:
            s.original, s.original_times = hit
        else:
            todo.append(s)

    def keep(i, result):
        todo[i].original, todo[i].original_times = result
        store(ckpt / f"original-{todo[i].base_key}", result)

    fan_out(train_original, [(train_refs[s.seed], s.make_model, cfg.train, s.seed) for s in todo], cfg.cluster, res,
            desc="originals", progress=progress, on_result=keep)


def _prepare(cfg: Config, seeded: list[Seeded], ckpt: Path, device) -> dict[tuple, dict]:
    """2. Methods' untimed preparation (SISA's initial shards), alone on the cluster."""
    prepared = {}
    for name in [n for n in cfg.method_names() if hook(cfg.method(n), "prepare")]:
        for s in seeded:
            log.info("%s: preparing (seed %d), not timed", name, s.seed)
            stats = hook(cfg.method(name), "prepare")(_task(cfg, s, [], device, ckpt / f"work-{s.base_key}"),
                                                      cfg.method_config(name))
            # A resumed run finds its work done; report the first run's figures.
            path = ckpt / f"prepare-{name}-{config_hash([s.base_key, cfg.method_config(name)])}"
            prepared[name, s.seed] = cached(path, lambda: dict(stats))
    return prepared


def _grid(cfg: Config, seeded: list[Seeded], train_refs: dict, ckpt: Path, res, progress: bool) -> dict[tuple, list]:
    """3. Every (method, seed, forget spec) as one Ray task; identical cells (one retrain serving
    two specs with the same final forget set) run once. Each finished cell is checkpointed."""
    exp = cfg.experiment
    todo, results, same_work = [], {}, {}
    for spec in exp.forget:
        for s in seeded:
            for name in cfg.method_names():
                reqs = s.requests[spec.label()]
                if name == "retrain" and not exp.retrain_each_request and len(reqs) > 1:
                    reqs = [np.unique(np.concatenate(reqs))]  # one retrain without every request
                key = config_hash([s.base_key, name, cfg.method_config(name), [r.tolist() for r in reqs]])
                cell = (name, s.seed, spec.label())
                same_work.setdefault(key, []).append(cell)
                if len(same_work[key]) > 1:
                    continue
                hit = load_cached(ckpt / f"unit-{name}-{key}")
                if hit:
                    results[cell] = hit
                else:
                    todo.append((cell, key, reqs, s))

    def keep(i, result):
        cell, key = todo[i][:2]
        results[cell] = result
        store(ckpt / f"unit-{cell[0]}-{key}", result)
        log.info("%s, seed %d, %s: %s", *cell, ", ".join(f"{r['row']['wall_s']:.1f} s" for r in result))

    import ray

    originals = {s.seed: ray.put({k: v.cpu() for k, v in s.original.state_dict().items()}) for s in seeded}
    calls = [(METHODS.module_name(cell[0]), cfg.method_config(cell[0]), train_refs[s.seed], s.data.num_classes, originals[s.seed],
              s.make_model, cfg.train, s.seed, reqs, str(ckpt / f"work-{s.base_key}"), cfg.cluster)
             for cell, _, reqs, s in todo]
    fan_out(run_unit, calls, cfg.cluster, res, max_parallel=exp.parallel_runs, desc="grid", progress=progress,
            on_result=keep)
    for first, *others in same_work.values():
        results.update({cell: results[first] for cell in others})
    return results


def _benchmarks(cfg: Config, seeded: list[Seeded], results: dict, ckpt: Path, device) -> dict[tuple, dict]:
    """4. Methods' parallel-against-one-worker measurements, each alone on the cluster."""
    benches = {}
    for name in [n for n in cfg.method_names() if hook(cfg.method(n), "benchmark")]:
        for spec in [sp for sp in cfg.experiment.forget if sp.requests == 1]:
            for s in seeded:
                cell, reqs = (name, s.seed, spec.label()), s.requests[spec.label()]
                path = ckpt / f"bench-{name}-{config_hash([s.base_key, cfg.method_config(name), reqs[0].tolist()])}"
                log.info("%s: benchmark (seed %d, %s)", name, s.seed, spec.label())
                task = _task(cfg, s, reqs, device, ckpt / f"work-{s.base_key}")
                row = {k: v for k, v in results[cell][0]["row"].items() if k != "cpu_s"}
                benches[cell] = run_benchmark(cfg.method(name), task, cfg.method_config(name), row, path)
    return benches
