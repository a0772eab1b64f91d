"""Unlearning features and labels: for each model and correction request, train the original
on the data before the request, then retrain on the corrected data (the reference), a second
retraining from another seed (the noise floor: how far two retrainings land from each other)
and every listed update, judged side by side (Warnecke et al., NDSS 2023).

Columns: test accuracy; `affected_acc`, accuracy on the corrected affected samples; for label
requests `old_label_rate`, the share of them still predicted as their wrong label; distance to
the retrained model in parameters (L2) and predictions on the test set (JS, in thousandths);
`grad_residual`, the norm of the corrected training objective's gradient at the result.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedunlearn.config import to_dict
from fedunlearn.data import DataConfig, load_dataset
from fedunlearn.errors import ConfigError
from fedunlearn.experiments.pipeline import MethodsSection, run_method, timed
from fedunlearn.features_labels import FL_METHODS
from fedunlearn.features_labels.task import FLRequestConfig, FLTask, make_request, objective
from fedunlearn.influence import grad_of, params_of
from fedunlearn.metrics.distance import js_divergence, l2_distance
from fedunlearn.metrics.report import write_report
from fedunlearn.models import MODELS, ModelConfig, build_model
from fedunlearn.training import TrainConfig, get_device, predict_probs, seed_everything, train

log = logging.getLogger("fedunlearn")
REFERENCE, NOISE_FLOOR = "fl_retrain", "retrain_other_seed"
COLUMNS = ["model", "request", "method", "test_acc", "affected_acc", "old_label_rate", "l2_to_retrain", "js_x1000",
           "grad_residual", "wall_s", "speedup"]


@dataclass(frozen=True)
class ExperimentSection:
    name: str = "features_labels"
    seed: int = 0
    device: str = "auto"
    models: tuple[str, ...] = ("logistic", "mlp")
    methods: tuple[str, ...] = ("fl_retrain", "first_order", "second_order", "fl_finetune")


@dataclass(frozen=True)
class Config(MethodsSection):
    kind: str = "features_labels"
    experiment: ExperimentSection = ExperimentSection()
    data: DataConfig = DataConfig(name="digits")
    model: ModelConfig = ModelConfig(name="mlp", hidden=32)
    train: TrainConfig = TrainConfig(epochs=30, batch_size=64, lr=0.05)
    requests: tuple[FLRequestConfig, ...] = (FLRequestConfig(name="relabel-5%"),
                                             FLRequestConfig(name="zero-block-20%", kind="features", fraction=0.2))
    methods: dict = field(default_factory=dict)   # [methods.<name>]: that method's Config

    registry, reference = FL_METHODS, REFERENCE  # MethodsSection checks every listed method and section

    def __post_init__(self):
        self.check_methods()
        for name in self.experiment.models:
            if name not in MODELS:
                raise ConfigError(f"unknown model '{name}'; valid choices: {', '.join(MODELS)}")
        if not self.requests:
            raise ConfigError("a features_labels config needs at least one [[requests]] entry")


def run(cfg: Config, out_dir: str | Path, progress: bool = True) -> dict:
    seed, device = cfg.experiment.seed, get_device(cfg.experiment.device)
    bundle = load_dataset(cfg.data, seed)
    rows = []
    for model_name in cfg.experiment.models:
        model_cfg = dataclasses.replace(cfg.model, name=model_name)

        def make_model(model_cfg=model_cfg, s=seed):
            seed_everything(s)
            return build_model(model_cfg, bundle.input_shape, bundle.num_classes)

        for i, spec in enumerate(cfg.requests):
            data = make_request(bundle.train, spec, bundle.num_classes, seed + i)
            original = train(make_model(), data.before, cfg.train, device, seed=seed, progress=False)
            task = FLTask(original, data, cfg.train, make_model, device, seed)
            rows += _run_request(cfg, task, bundle, model_name, spec, spec.name or f"{spec.kind}-{spec.fraction:g}")
    write_report(Path(out_dir), f"{cfg.experiment.name}: unlearning features and labels on {bundle.name}", to_dict(cfg),
                 rows, columns=COLUMNS, notes=[
                     f"recipe: {to_dict(cfg.train)}; {len(bundle.train)} training, {len(bundle.test)} test samples",
                     f"{NOISE_FLOOR}: retraining on the corrected data from another seed; its l2_to_retrain is the "
                     "seed-to-seed distance the updates' distances are read against"])
    return {"results": rows, "config": to_dict(cfg), "columns": COLUMNS}


def _run_request(cfg: Config, task: FLTask, bundle, model_name: str, spec: FLRequestConfig, label: str) -> list[dict]:
    head = {"model": model_name, "request": label, "affected": len(task.data.affected)}
    models, rows = {"original": task.original}, [{**head, "method": "original"}]
    for name in cfg.method_names():
        models[name], row = run_method(cfg.method(name), task, cfg.method_config(name))
        rows.append({**head, "method": name, **row})
        log.info("%s / %s / %s: %.2f s", model_name, label, name, row["wall_s"])

    def other_seed():
        other = task.seed + 1000  # another initialisation and batch order
        seed_everything(other)
        fresh = build_model(dataclasses.replace(cfg.model, name=model_name), bundle.input_shape, bundle.num_classes)
        return train(fresh, task.data.after, task.train_cfg, task.device, seed=other + 1, progress=False)
    models[NOISE_FLOOR], seconds = timed(other_seed)
    rows.append({**head, "method": NOISE_FLOOR, "wall_s": seconds})

    idx = torch.as_tensor(task.data.affected)
    fixed, old = task.data.after.subset(idx), task.data.before.subset(idx)
    cpu = torch.device("cpu")  # evaluation where the data is
    ref_probs = predict_probs(models[REFERENCE].cpu(), bundle.test, cpu)
    ref_s = next(r["wall_s"] for r in rows if r["method"] == REFERENCE)
    for row in rows:
        model = models[row["method"]].cpu().eval()
        probs = predict_probs(model, bundle.test, cpu)
        row["test_acc"] = float((probs.argmax(1) == bundle.test.y).float().mean())
        pred = predict_probs(model, fixed, cpu).argmax(1)
        row["affected_acc"] = float((pred == fixed.y).float().mean())
        if spec.kind == "labels":
            row["old_label_rate"] = float((pred == old.y).float().mean())
        row["l2_to_retrain"] = l2_distance(model, models[REFERENCE])
        row["js_x1000"] = 1000 * js_divergence(probs, ref_probs)
        wd = task.train_cfg.weight_decay
        row["grad_residual"] = float(grad_of(lambda: objective(model, task.data.after, wd), params_of(model)).norm())
        if "wall_s" in row:
            row["speedup"] = ref_s / row["wall_s"] if row["wall_s"] > 0 else float("inf")
    return rows
