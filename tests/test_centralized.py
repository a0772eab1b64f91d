"""End-to-end centralized runs on digits: the report, resuming, class forgetting, MIA."""

import json

import pytest

from fedunlearn.cli import load_experiment, main
from fedunlearn.data import DataConfig
from fedunlearn.experiments import centralized
from fedunlearn.models import ModelConfig
from fedunlearn.training import TrainConfig

FAST = ["data.name=digits", "data.train_size=0", "model.name=mlp", "train.epochs=6", "train.batch_size=64",
        "experiment.methods=['retrain','finetune','neggrad_plus','random_label']"]
FIELDS = ["method", "test_acc", "retain_acc", "forget_acc", "mia_efficacy", "mia_auc", "js_to_retrain",
          "l2_to_retrain", "avg_gap", "wall_s", "speedup"]


def _run(tmp_path, extra=()):
    args = ["run", "simulations/quickstart.toml", "-q", "--out", str(tmp_path)]
    for item in [*FAST, *extra]:
        args += ["--set", item]
    assert main(args) == 0
    return json.loads((tmp_path / "report.json").read_text())


def test_end_to_end_report_on_digits(tmp_path):
    report = _run(tmp_path)
    rows = {r["method"]: r for r in report["results"]}
    assert list(rows) == ["original", "retrain", "finetune", "neggrad_plus", "random_label"]
    for row in rows.values():
        assert all(field in row for field in FIELDS)
        for key in ("test_acc", "retain_acc", "forget_acc", "mia_efficacy"):
            assert 0.0 <= row[key] <= 1.0
    assert rows["retrain"]["avg_gap"] == 0.0 and rows["retrain"]["speedup"] == 1.0
    assert rows["retrain"]["test_acc"] > 0.8
    assert report["config"]["data"]["name"] == "digits"
    assert (tmp_path / "report.md").read_text().startswith("# quickstart")
    assert (tmp_path / "confidence_neggrad_plus.png").stat().st_size > 1000


def test_resume_reuses_checkpoints(tmp_path, caplog):
    first = _run(tmp_path)
    caplog.clear()
    with caplog.at_level("INFO", logger="fedunlearn"):
        second = _run(tmp_path)
    assert "reusing checkpoint" in caplog.text
    assert [r["test_acc"] for r in first["results"]] == [r["test_acc"] for r in second["results"]]
    assert [r["wall_s"] for r in first["results"]] == [r["wall_s"] for r in second["results"]]


def test_class_forgetting_retrain_forgets_the_class(tmp_path):
    report = _run(tmp_path, ["forget.kind=class", "forget.classes=[3]", "experiment.methods=['retrain']"])
    rows = {r["method"]: r for r in report["results"]}
    assert rows["original"]["forget_acc"] > 0.8
    assert rows["retrain"]["forget_acc"] < 0.05


def test_mia_auc_above_chance_when_overfit_and_near_chance_after_retrain(tmp_path):
    """A small, overfit original remembers its forget set; retraining removes the signal."""
    _, cfg = load_experiment("simulations/quickstart.toml", [])
    cfg = type(cfg)(experiment=centralized.ExperimentSection(name="mia", methods=("retrain",)),
                    data=DataConfig(name="digits", train_size=300), model=ModelConfig(name="mlp", hidden=256),
                    train=TrainConfig(epochs=150, batch_size=32, lr=0.05, weight_decay=0.0),
                    forget=cfg.forget)
    rows = {r["method"]: r for r in centralized.run(cfg, tmp_path, progress=False)["results"]}
    assert rows["original"]["mia_auc"] > 0.6
    assert abs(rows["retrain"]["mia_auc"] - 0.5) < abs(rows["original"]["mia_auc"] - 0.5)


@pytest.mark.parametrize("method", ["finetune", "neggrad_plus", "random_label"])
def test_methods_run_as_plain_functions_without_ray(method, tmp_path):
    from fedunlearn.unlearn import METHODS, UnlearnTask

    _, cfg = load_experiment("simulations/quickstart.toml", FAST)
    p = centralized.prepare(cfg)
    original = p.make_model()
    task = UnlearnTask(original=original, retain=p.retain, forget=p.forget, train_cfg=cfg.train,
                       make_model=p.make_model, num_classes=10, device="cpu")
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model, stats = METHODS.get(method).unlearn(task, METHODS.get(method).Config(epochs=1))
    assert model is not original and isinstance(stats, dict)
    assert all((before[k] == v).all() for k, v in original.state_dict().items())  # original untouched
