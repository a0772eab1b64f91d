"""The survey experiment end to end on digits (a handful of methods), and its config checks."""

import json

import pytest

from fedunlearn.cli import load_experiment, main
from fedunlearn.errors import ConfigError
from fedunlearn.unlearn import METHODS

KEEP = ["finetune", "certified_removal", "newton_source_free", "deltagrad", "linear_filtration"]
FIELDS = ["method", "test_acc", "retain_acc", "forget_acc", "mia_efficacy", "l2_to_retrain", "speedup",
          "keeps_test_acc", "forget_gap_closed"]


def tiny(extra=()):
    exclude = [m for m in METHODS.names() if m not in KEEP and m != "retrain"]
    return ["data.name=digits", "data.train_size=0", "data.test_size=0", "model.name=mlp", "model.hidden=16",
            "train.epochs=3", "train.batch_size=64", f"experiment.exclude={exclude}",
            "convex.data.name=digits", "convex.data.train_size=0", "convex.data.test_size=0", "convex.model.pool=1",
            "convex.train.epochs=5", "convex.train.batch_size=64", "labels.counts=[2, 3]", "labels.per_class=40",
            "eval.mia_max_samples=200", *extra]


@pytest.mark.slow
def test_survey_end_to_end_on_digits(tmp_path):
    args = ["run", "simulations/survey.toml", "-q", "--out", str(tmp_path)]
    for item in tiny():
        args += ["--set", item]
    assert main(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["results"]
    parts = {r["part"] for r in rows}
    assert parts == {"class", "random", "convex", "labels-2", "labels-3"}
    class_rows = {r["method"]: r for r in rows if r["part"] == "class"}
    assert list(class_rows) == ["original", "retrain", *[m for m in METHODS.names() if m in KEEP]]
    for row in class_rows.values():
        assert all(field in row for field in FIELDS) and row["keeps_test_acc"] in ("yes", "no")
    assert class_rows["linear_filtration"]["forget_acc"] < 0.05
    random_methods = [r["method"] for r in rows if r["part"] == "random"]
    assert "linear_filtration" not in random_methods and "deltagrad" in random_methods
    convex = {r["method"]: r for r in rows if r["part"] == "convex"}
    assert "retrain_other_seed" in convex and convex["retrain_other_seed"]["l2_to_retrain"] > 0
    assert convex["deltagrad"]["prepare_s"] > 0 and "dist_to_exact_newton" in convex["newton_source_free"]
    text = (tmp_path / "report.md").read_text()
    assert "noise floor" in text and "skipped (class forgetting only): linear_filtration" in text
    assert "Label-count study" in text and (tmp_path / "label_count.png").stat().st_size > 1000
    assert (tmp_path / "labels-3" / "report.json").is_file()


@pytest.mark.parametrize("override, message", [
    ("experiment.parts=['class', 'bogus']", "unknown survey part"),
    ("experiment.forget_class=5", "forget_class"),
    ("experiment.exclude=['no_such_method']", "unknown method 'no_such_method'"),
    ("labels.counts=[1, 2]", "labels.counts"),
    ("methods.certified_removal.newton_steps=0", "newton_steps"),
])
def test_survey_config_errors_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment("simulations/survey.toml", [override])
