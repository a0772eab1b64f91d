"""Unlearning features and labels (Warnecke et al.) on scikit-learn's digits: requests, the
first- and second-order updates against retraining, the experiment end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.cli import load_experiment
from fedunlearn.config import build
from fedunlearn.data import DataConfig, load_dataset
from fedunlearn.errors import ConfigError, DataError
from fedunlearn.experiments import EXPERIMENTS
from fedunlearn.features_labels.methods import first_order, retrain, second_order
from fedunlearn.features_labels.task import FLRequestConfig, FLTask, make_request
from fedunlearn.metrics.distance import l2_distance
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, seed_everything, train
from toy_method import registered

RECIPE = TrainConfig(epochs=30, batch_size=64, lr=0.05, weight_decay=0.01)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"), 0)


def test_requests_correct_only_the_affected_samples(digits):
    labels = make_request(digits.train, FLRequestConfig(kind="labels", fraction=0.1), 10, 0)
    changed = np.flatnonzero((labels.before.y != labels.after.y).numpy())
    assert np.array_equal(changed, labels.affected) and torch.equal(labels.after.y, digits.train.y)
    feats = make_request(digits.train, FLRequestConfig(kind="features", fraction=0.1, region=(2, 3, 2, 4)), 10, 0)
    diff = (feats.before.x != feats.after.x).flatten(1).any(1).numpy()
    assert set(np.flatnonzero(diff)) <= set(feats.affected)
    assert (feats.after.x[torch.as_tensor(feats.affected)][..., 2:4, 3:7] == 0).all()
    with pytest.raises(DataError, match="does not fit"):
        make_request(digits.train, FLRequestConfig(kind="features", region=(6, 6, 4, 4)), 10, 0)
    with pytest.raises(ConfigError, match="region"):
        build(FLRequestConfig, {"region": [0, 0, 0, 2]})


@pytest.mark.parametrize("kind", ["labels", "features"])
def test_second_order_lands_near_retraining_on_the_convex_model(digits, kind):
    data = make_request(digits.train, FLRequestConfig(kind=kind, fraction=0.1), 10, 0)

    def make_model(seed=0):
        seed_everything(seed)
        return build_model(ModelConfig(name="logistic"), digits.input_shape, 10)

    original = train(make_model(), data.before, RECIPE, torch.device("cpu"), seed=0, progress=False)
    task = FLTask(original, data, RECIPE, make_model, torch.device("cpu"), 0)
    ref, _ = retrain.unlearn(task)
    second, stats = second_order.unlearn(task)
    first, fstats = first_order.unlearn(task)
    base = l2_distance(original, ref)
    assert l2_distance(second, ref) < 0.5 * base and not stats["cg_negative_curvature"]
    assert l2_distance(first, ref) <= base and fstats["tau"] > 0


def test_features_labels_config_runs_end_to_end(tmp_path):
    module, cfg = load_experiment("simulations/features_labels.toml", [
        "experiment.models=['logistic']", "train.epochs=5", "requests=[{name='r', kind='labels', fraction=0.05}]"])
    report = module.run(cfg, tmp_path, progress=False)
    methods = [r["method"] for r in report["results"]]
    assert methods == ["original", "fl_retrain", "first_order", "second_order", "fl_finetune", "retrain_other_seed"]
    floor = report["results"][-1]
    assert floor["l2_to_retrain"] > 0 and (tmp_path / "report.md").is_file()
    with pytest.raises(ConfigError, match="feature/label method 'nope'"):
        build(EXPERIMENTS.get("features_labels").Config, {"kind": "features_labels",
                                                           "experiment": {"methods": ["nope"]}})


TOY_FL = '''
"""toy_fl: keeps the original model (a method that corrects nothing)."""
import copy
from dataclasses import dataclass

@dataclass(frozen=True)
class Config:
    scale: float = 1.0

def unlearn(task, cfg):
    return copy.deepcopy(task.original), {"toy_affected": float(len(task.data.affected)) * cfg.scale}

def prepare(task, cfg):
    return {"toy_prepared": 1.0}

def diagnose(task, cfg, model):
    return {"toy_diagnosed": float(len(task.data.after))}
'''


@pytest.fixture
def toy_fl():
    from fedunlearn.features_labels import FL_METHODS

    with registered(FL_METHODS, "toy_fl", TOY_FL) as name:
        yield name


def test_toy_method_gets_every_hook_in_the_features_labels_kind(toy_fl, tmp_path):
    module, cfg = load_experiment("simulations/features_labels.toml", [
        "experiment.models=['logistic']", "train.epochs=2", "requests=[{name='r', kind='labels', fraction=0.05}]",
        "experiment.methods=['fl_retrain', 'toy_fl']", "methods.toy_fl.scale=2.0"])
    rows = {r["method"]: r for r in module.run(cfg, tmp_path, progress=False)["results"]}
    row = rows["toy_fl"]
    assert row["toy_affected"] == 2.0 * row["affected"]  # its [methods.toy_fl] section, a plain tuple answer
    assert row["toy_prepared"] == 1.0 and row["prepare_s"] >= 0 and row["toy_diagnosed"] > 0
    assert row["l2_to_retrain"] == rows["original"]["l2_to_retrain"]  # it kept the original
