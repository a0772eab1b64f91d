"""Centralized unlearning: train the original, then every listed method, judged side by side.

The flow is the one every report follows: load data and pick the forget set; train the
original model on everything; run `retrain` (the reference) and each method on the same
task, timing each; evaluate all with the one evaluation; compare each to the retrained model.
Every trained model is checkpointed under OUT/checkpoints, keyed by the config that produced
it, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedunlearn import checkpoint
from fedunlearn.audit.config import AuditConfig
from fedunlearn.config import build, config_hash, to_dict
from fedunlearn.data import DataBundle, DataConfig, ForgetConfig, complement, load_dataset
from fedunlearn.data.forget_model import select_forget_for
from fedunlearn.errors import ConfigError
from fedunlearn.metrics import EvalConfig, Splits, compare_to_reference, evaluate, write_report
from fedunlearn.metrics.mia import sample_feature
from fedunlearn.metrics.plots import confidence_histogram
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, get_device, seed_everything, train
from fedunlearn.unlearn import METHODS, UnlearnTask

log = logging.getLogger("fedunlearn")
NOISE_FLOOR = "retrain_other_seed"


@dataclass(frozen=True)
class ExperimentSection:
    name: str = "centralized"
    seed: int = 0
    device: str = "auto"  # auto = CUDA when present, else CPU
    methods: tuple[str, ...] = ("retrain", "finetune", "neggrad_plus", "random_label")
    # Also retrain from another seed (initialisation and batch order), as row "retrain_other_seed": its
    # distances to `retrain` are the noise floor against which every method's distances are read.
    noise_floor: bool = False


@dataclass(frozen=True)
class Config:
    kind: str = "centralized"
    experiment: ExperimentSection = ExperimentSection()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    forget: ForgetConfig = ForgetConfig()
    eval: EvalConfig = EvalConfig()
    methods: dict = field(default_factory=dict)  # [methods.<name>] sections: that method's Config
    audit: AuditConfig = AuditConfig()  # [audit] models = N > 0 makes the run an ensemble audit

    def __post_init__(self):
        for name in self.experiment.methods:
            METHODS.check(name)
        for name in self.methods:
            METHODS.check(name)
        for name in self.method_names():
            self.method_config(name)  # validate every section now, not after an hour of training

    def method_names(self) -> list[str]:
        """`retrain` always runs first: every other method is compared with it."""
        return ["retrain"] + [m for m in self.experiment.methods if m != "retrain"]

    def method_config(self, name: str):
        return build(METHODS.get(name).Config, self.methods.get(name, {}), f"methods.{name}")


def prepare(cfg: Config, data: DataBundle | None = None):
    """Data, forget set and task skeleton shared by every method (deterministic in the seed).

    `data` replaces the data set cfg.data names (e.g. a class subset built by another experiment).
    """
    seed = cfg.experiment.seed
    data = data if data is not None else load_dataset(cfg.data, seed)
    labels = data.train.y.numpy()

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, data.input_shape, data.num_classes)

    # subpopulation / atypical need the original: the same seeded training run() does next.
    forget_idx = select_forget_for(data.train, cfg.forget, seed, lambda: [train(
        make_model(), data.train, cfg.train, get_device(cfg.experiment.device), seed=seed, progress=False)],
        get_device(cfg.experiment.device))
    retain_idx = complement(len(labels), forget_idx)
    retain, forget = data.train.subset(retain_idx), data.train.subset(forget_idx)
    eval_retain = retain
    if cfg.eval.eval_retain_size and len(retain) > cfg.eval.eval_retain_size:
        pick = np.random.default_rng(seed).choice(len(retain), cfg.eval.eval_retain_size, replace=False)
        eval_retain = retain.subset(np.sort(pick))
    splits = Splits(retain=eval_retain, forget=forget, test=data.test)
    return data, splits, retain_idx, forget_idx, retain, forget, make_model


def run(cfg: Config, out_dir: str | Path, progress: bool = True, data: DataBundle | None = None) -> dict:
    if cfg.audit.models > 0:
        from fedunlearn.audit.runner import run_audit

        return run_audit(cfg, out_dir, progress, data)
    out = Path(out_dir)
    ckpt = out / "checkpoints"
    device = get_device(cfg.experiment.device)
    seed = cfg.experiment.seed
    given = data is not None
    data, splits, retain_idx, forget_idx, retain, forget, make_model = prepare(cfg, data)
    log.info("data %s: %d train (%d forget), %d test; device %s", data.name, len(data.train),
             len(forget_idx), len(data.test), device)

    base_key = config_hash([cfg.data, cfg.model, cfg.train, cfg.forget, seed]
                           + ([data.name, data.train.y.tolist(), data.num_classes] if given else []))
    original, original_s = _trained(ckpt / f"original-{base_key}", lambda: train(
        make_model(), data.train, cfg.train, device, seed=seed, desc="original", progress=progress))

    task = UnlearnTask(original=original, retain=retain, forget=forget, train_cfg=cfg.train,
                       make_model=make_model, num_classes=data.num_classes, device=device, seed=seed,
                       retain_idx=retain_idx, forget_idx=forget_idx, workdir=str(ckpt / f"work-{base_key}"),
                       val=data.val)
    models, rows = {"original": original}, [{"method": "original", "wall_s": original_s}]
    for name in cfg.method_names():
        method, method_cfg = METHODS.get(name), cfg.method_config(name)
        key = config_hash([base_key, name, method_cfg])
        stats: dict = {}

        def work():
            model, more = method.unlearn(task, method_cfg)
            stats.update(more)
            return model

        path = ckpt / f"{name}-{key}"
        if hasattr(method, "prepare") and not checkpoint.exists(path):
            # Training-time bookkeeping (SISA's shards, DeltaGrad's trajectory): not unlearning time.
            start = time.perf_counter()
            stats.update(method.prepare(task, method_cfg))
            stats["prepare_s"] = time.perf_counter() - start
        models[name], seconds = _trained(path, work, stats)
        if hasattr(method, "diagnose"):
            # Numbers that need data the method must not use (e.g. the exact update): untimed.
            stats.update(method.diagnose(task, method_cfg, models[name]))
        rows.append({"method": name, "wall_s": seconds, **stats})
        log.info("%s done in %.1f s", name, seconds)
    if cfg.experiment.noise_floor:
        other = seed + 1000

        def second_retrain():
            seed_everything(other)
            model = build_model(cfg.model, data.input_shape, data.num_classes)
            return train(model, retain, cfg.train, device, seed=other + 1, desc=NOISE_FLOOR, progress=progress)

        models[NOISE_FLOOR], seconds = _trained(ckpt / f"{NOISE_FLOOR}-{base_key}", second_retrain)
        rows.append({"method": NOISE_FLOOR, "wall_s": seconds})

    results, plots = [], []
    ref = {}
    for row in [r for r in rows if r["method"] == "retrain"] + [r for r in rows if r["method"] != "retrain"]:
        name = row["method"]
        metrics, outputs = evaluate(models[name], splits, device, cfg.eval, seed=seed)
        row = {"method": name, **metrics, **{k: v for k, v in row.items() if k != "method"}}
        if name == "retrain":
            ref = {"row": dict(row), "out": outputs, "model": models[name], "s": row["wall_s"]}
        compare_to_reference(row, outputs, models[name], ref["row"], ref["out"], ref["model"], ref["s"])
        results.append(row)
        confs = {part: sample_feature(getattr(outputs, part), getattr(splits, part).y).ravel()
                 for part in ("forget", "retain", "test")}
        plots.append(str(confidence_histogram(name, confs, out / f"confidence_{name}.png")))
    results.sort(key=lambda r: ["original", *cfg.method_names(), NOISE_FLOOR].index(r["method"]))

    notes = [f"original recipe (retrain uses it exactly): {to_dict(cfg.train)} on {len(data.train)} samples",
             f"forget set: {len(forget_idx)} samples ({cfg.forget.kind}); test set: {len(data.test)} samples",
             f"device: {device}; speedup = retrain wall time / method wall time, measured in this run"]
    write_report(out, f"{cfg.experiment.name}: centralized unlearning on {data.name}", to_dict(cfg), results,
                 extra={"forget_size": len(forget_idx), "train_size": len(data.train)}, notes=notes, plots=plots)
    return {"results": results, "config": to_dict(cfg)}


def _trained(path: Path, work, stats: dict | None = None):
    """Run `work()` -> model, or reuse its checkpoint from an earlier, interrupted run."""
    cached = checkpoint.load_or_none(path)
    if cached is not None:
        model, meta = cached
        if stats is not None:
            stats.update(meta.get("stats", {}))
        log.info("reusing checkpoint %s", path.name)
        return model, meta["wall_s"]
    start = time.perf_counter()
    model = work()
    seconds = time.perf_counter() - start
    checkpoint.save(path, model, {"wall_s": seconds, "stats": stats or {}})
    return model, seconds


def load_config(mapping: dict) -> Config:
    if mapping.get("kind", "centralized") != "centralized":
        raise ConfigError("not a centralized config")
    return build(Config, mapping)
