"""Centralized unlearning: train the original, then every listed method, judged side by side.

The flow is the one every report follows: load data and pick the forget set; train the
original model on everything; run `retrain` (the reference) and each method on the same
task, timing each; evaluate all with the one evaluation; compare each to the retrained model.
Every trained model is checkpointed under OUT/checkpoints, keyed by the config that produced
it, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from fedunlearn import outdir
from fedunlearn.audit.config import AuditConfig
from fedunlearn.config import config_hash, to_dict
from fedunlearn.data import DataBundle, DataConfig, ForgetConfig, complement, load_dataset
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.data.forget_model import select_forget_for
from fedunlearn.experiments.pipeline import (MethodsSection, cached, evaluate_against_reference, make_task,
                                             run_benchmark, run_method, timed)
from fedunlearn.metrics import EvalConfig, Splits, write_report
from fedunlearn.metrics.mia import sample_feature
from fedunlearn.metrics.plots import confidence_histogram
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, get_device, seed_everything, train
from fedunlearn.unlearn import METHODS

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
    benchmark: bool = False  # run the methods' benchmark hooks (e.g. parallel against one worker)


@dataclass(frozen=True)
class Config(MethodsSection):
    kind: str = "centralized"
    experiment: ExperimentSection = ExperimentSection()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    forget: ForgetConfig = ForgetConfig()
    eval: EvalConfig = EvalConfig()
    methods: dict = field(default_factory=dict)  # [methods.<name>] sections: that method's Config
    audit: AuditConfig = AuditConfig()  # [audit] models = N > 0 makes the run an ensemble audit

    registry = METHODS  # MethodsSection.__post_init__ checks every listed method and section


@dataclass
class Prepared:
    """Data, forget set and task skeleton shared by every method of a run."""

    data: DataBundle
    splits: Splits            # what every model is judged on
    retain_idx: np.ndarray
    forget_idx: np.ndarray
    retain: ArrayDataset
    forget: ArrayDataset
    make_model: Callable[[], nn.Module]


def prepare(cfg: Config, data: DataBundle | None = None,
            original: Callable[[Callable[[], nn.Module]], nn.Module] | None = None) -> Prepared:
    """Deterministic in the seed. `data` replaces the data set cfg.data names (e.g. a class subset
    built by another experiment). `original(make_model)` gives the trained original, which the
    subpopulation / atypical forget sets are chosen with (default: train it here, untimed)."""
    seed = cfg.experiment.seed
    data = data if data is not None else load_dataset(cfg.data, seed)
    labels = data.train.y.numpy()

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, data.input_shape, data.num_classes)

    device = get_device(cfg.experiment.device)
    if original is None:
        def original(make):
            return train(make(), data.train, cfg.train, device, seed=seed, progress=False)
    forget_idx = select_forget_for(data.train, cfg.forget, seed, lambda: [original(make_model)], device)
    retain_idx = complement(len(labels), forget_idx)
    retain, forget = data.train.subset(retain_idx), data.train.subset(forget_idx)
    eval_retain = retain
    if cfg.eval.eval_retain_size and len(retain) > cfg.eval.eval_retain_size:
        pick = np.random.default_rng(seed).choice(len(retain), cfg.eval.eval_retain_size, replace=False)
        eval_retain = retain.subset(np.sort(pick))
    splits = Splits(retain=eval_retain, forget=forget, test=data.test)
    return Prepared(data, splits, retain_idx, forget_idx, retain, forget, make_model)


def run(cfg: Config, out_dir: str | Path, progress: bool = True, data: DataBundle | None = None) -> dict:
    if cfg.audit.models > 0:
        from fedunlearn.audit.runner import run_audit

        return run_audit(cfg, out_dir, progress, data)
    out = Path(out_dir)
    outdir.mark(out)  # a survey's part folders too: --fresh may empty only marked folders
    ckpt = out / "checkpoints"
    device = get_device(cfg.experiment.device)
    seed = cfg.experiment.seed
    given = data is not None
    data = data if given else load_dataset(cfg.data, seed)
    given_key = [data.name, data.train.y.tolist(), data.num_classes] if given else []
    # The original is keyed only on what trains it, so a new forget request reuses it, and the
    # model-based forget sets (subpopulation, atypical) are chosen with this same checkpoint.
    original_key = config_hash([cfg.data, cfg.model, cfg.train, seed] + given_key)
    base_key = config_hash([cfg.data, cfg.model, cfg.train, cfg.forget, seed] + given_key)

    def trained_original(make_model):
        return cached(ckpt / f"original-{original_key}", lambda: timed(lambda: train(
            make_model(), data.train, cfg.train, device, seed=seed, desc="original", progress=progress)))

    p = prepare(cfg, data, original=lambda make_model: trained_original(make_model)[0])
    log.info("data %s: %d train (%d forget), %d test; device %s", data.name, len(data.train),
             len(p.forget_idx), len(data.test), device)
    original, original_s = trained_original(p.make_model)

    task = make_task(data.train, p.forget_idx, original, train_cfg=cfg.train, make_model=p.make_model,
                     num_classes=data.num_classes, device=device, seed=seed, workdir=str(ckpt / f"work-{base_key}"),
                     val=data.val)
    models, rows = {"original": original}, [{"method": "original", "wall_s": original_s}]
    for name in cfg.method_names():
        method, method_cfg = cfg.method(name), cfg.method_config(name)
        key = config_hash([base_key, name, method_cfg])
        models[name], row = run_method(method, task, method_cfg, ckpt / f"{name}-{key}")
        rows.append({"method": name, **row})
        log.info("%s done in %.1f s", name, row["wall_s"])
    if cfg.experiment.benchmark:
        for row in rows[1:]:
            name = row["method"]
            key = config_hash([base_key, name, cfg.method_config(name)])
            row.update(run_benchmark(cfg.method(name), task, cfg.method_config(name), row, ckpt / f"bench-{name}-{key}"))
    if cfg.experiment.noise_floor:
        other = seed + 1000

        def second_retrain():
            seed_everything(other)
            model = build_model(cfg.model, data.input_shape, data.num_classes)
            return train(model, p.retain, cfg.train, device, seed=other + 1, desc=NOISE_FLOOR, progress=progress)

        models[NOISE_FLOOR], seconds = cached(ckpt / f"{NOISE_FLOOR}-{base_key}", lambda: timed(second_retrain))
        rows.append({"method": NOISE_FLOOR, "wall_s": seconds})

    # retrain first: it is the reference of every comparison
    entries = [(r["method"], models[r["method"]], {k: v for k, v in r.items() if k != "method"})
               for r in sorted(rows, key=lambda r: r["method"] != "retrain")]
    results, plots = [], []
    for row, outputs in evaluate_against_reference(entries, p.splits, device, cfg.eval, seed):
        results.append(row)
        confs = {part: sample_feature(getattr(outputs, part), getattr(p.splits, part).y).ravel()
                 for part in ("forget", "retain", "test")}
        plots.append(str(confidence_histogram(row["method"], confs, out / f"confidence_{row['method']}.png")))
    results.sort(key=lambda r: ["original", *cfg.method_names(), NOISE_FLOOR].index(r["method"]))

    notes = [f"original recipe (retrain uses it exactly): {to_dict(cfg.train)} on {len(data.train)} samples",
             f"forget set: {len(p.forget_idx)} samples ({cfg.forget.kind}); test set: {len(data.test)} samples",
             f"device: {device}; speedup = retrain wall time / method wall time, measured in this run"]
    sizes = {"forget_size": len(p.forget_idx), "train_size": len(data.train)}
    write_report(out, f"{cfg.experiment.name}: centralized unlearning on {data.name}", to_dict(cfg), results,
                 extra={**sizes, "num_classes": data.num_classes}, notes=notes, plots=plots)
    return {"results": results, "config": to_dict(cfg), **sizes}
