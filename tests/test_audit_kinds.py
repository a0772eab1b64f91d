"""`[audit]` in the federated, cluster and survey kinds: real Ray tasks, real federations on digits."""

import json

import pytest

from fedunlearn.audit.report import AUDIT_FIELDS
from fedunlearn.cli import load_experiment
from fedunlearn.config import build
from fedunlearn.errors import ConfigError, WithdrawalError
from fedunlearn.experiments import cluster, federated, federated_matrix, survey
from tiny_federation import tiny_federation

COMMON = {"data": {"name": "digits", "val_size": 150}, "model": {"name": "mlp", "hidden": 32},
          "train": {"epochs": 10, "batch_size": 64, "lr": 0.05}, "eval": {"mia_max_samples": 200}}
CLUSTER = {"kind": "cluster", **COMMON,
           "experiment": {"name": "cluster-audit", "seeds": [0], "methods": ["retrain", "sisa", "amun"],
                          "forget": [{"name": "class-3", "kind": "class", "classes": [3]}]},
           "methods": {"sisa": {"shards": 2, "slices": 1, "epochs_per_slice": 5},
                       "amun": {"epochs": 1, "steps": 3, "chunks": 1}},
           "audit": {"models": 3}}
SURVEY = {"kind": "survey", **COMMON,
          "experiment": {"name": "survey-audit", "parts": ["class", "random", "convex", "labels"],
                         "random_fraction": 0.05},
          "convex": {"data": {"name": "digits"}, "methods": ["certified_removal"],
                     "train": {"epochs": 10, "batch_size": 256, "lr": 1.0, "weight_decay": 5e-3}},
          "labels": {"methods": ["finetune"]}, "methods": {"finetune": {"epochs": 1}},
          "audit": {"models": 3, "methods": ["finetune", "bad_teacher"]}}


def fed_audit(**audit):
    return tiny_federation("fed-audit", ["retrain", "subtract", "continue"], {"continue": {"rounds": 1}},
                           experiment={"timing_repeats": 1}, data={"val_size": 150}, audit={"models": 3, **audit})


def copy(mapping: dict) -> dict:
    return json.loads(json.dumps(mapping))


def check_rows(rows: list[dict], methods: list[str], extra_fields: list[str]) -> dict:
    by = {r["method"]: r for r in rows}
    assert list(by) == ["original", *methods, "retrain"]  # `retrain` last: the noise floor
    for row in rows:
        for field in AUDIT_FIELDS + ["test_acc", "test_acc_std", "forget_acc", "forget_acc_std", "speedup"] + extra_fields:
            assert field in row, (row["method"], field)
        assert row["models"] == 3
        assert 0.0 <= row["ulira_auc"] <= 1.0 and row["klom_forget"] >= 0.0
    return by


def test_audit_sections_are_checked_before_work():
    with pytest.raises(ConfigError, match="departing client's data"):
        build(federated.Config, fed_audit(forget=[{"kind": "class", "classes": [3]}]))
    with pytest.raises(ConfigError, match="federated method"):
        build(federated.Config, fed_audit(methods=["finetune"]))  # a centralized method, not a federated one
    with pytest.raises(ConfigError, match="at least 3"):
        build(federated.Config, fed_audit(models=2))
    with pytest.raises(ConfigError, match="does not run"):
        build(federated_matrix.Config, {"kind": "federated_matrix", "base": fed_audit(), "scenarios": {"a": {}}})
    spec = {"name": "x3", "kind": "random", "fraction": 0.05, "requests": 3}
    with pytest.raises(ConfigError, match="one request"):
        build(cluster.Config, {**copy(CLUSTER), "experiment": {**CLUSTER["experiment"], "forget": [spec]}})
    with pytest.raises(ConfigError, match="has none of them"):
        build(survey.Config, {**copy(SURVEY), "experiment": {**SURVEY["experiment"], "parts": ["labels"]}})


def test_offline_client_and_cooperative_method_fail_before_ray(tmp_path):
    mapping = fed_audit(methods=["source_free_cooperative"])
    mapping["withdrawal"]["departing_online"] = False
    with pytest.raises(WithdrawalError, match="departing_online"):
        federated.run(build(federated.Config, mapping), tmp_path, progress=False)


def test_shipped_configs_take_an_audit():
    _, cfg = load_experiment("simulations/withdrawal_audit_digits.toml", [])
    assert cfg.audit.models == 3 and cfg.data.name == "digits"
    for path in ("simulations/withdrawal_quickstart.toml", "simulations/withdrawal.toml"):
        _, cfg = load_experiment(path, ["audit.models=3"])
        assert cfg.audit.models == 3
    _, cfg = load_experiment("simulations/amun.toml", ["audit.models=3", "experiment.forget=[{kind='random', fraction=0.1}]"])
    assert cfg.audit.models == 3


@pytest.mark.slow
def test_federated_audit_with_three_models(local_ray, tmp_path):
    report = federated.run(build(federated.Config, fed_audit()), tmp_path, progress=False)
    rows = check_rows(report["results"], ["subtract", "continue"], ["backdoor_asr", "backdoor_asr_std", "retain_acc"])
    assert rows["continue"]["messages_to_remaining"] > 0 and rows["subtract"]["messages_to_remaining"] == 0
    assert all(r["forget"].startswith("client 0 withdraws") for r in rows.values())
    md = (tmp_path / "report.md").read_text()
    assert "noise floor" in md and (tmp_path / "audit_withdrawal.png").is_file()
    # a second run with the same --out reuses every task's checkpoint and reports the same numbers
    again = federated.run(build(federated.Config, fed_audit()), tmp_path, progress=False)
    assert [r["ulira_auc"] for r in again["results"]] == [r["ulira_auc"] for r in report["results"]]
    assert "9 of 9 tasks reused" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_cluster_audit_with_three_models(local_ray, tmp_path):
    report = cluster.run(build(cluster.Config, CLUSTER), tmp_path, progress=False)
    rows = check_rows(report["results"], ["sisa", "amun"], ["klom_val"])
    # class forgetting: the audit tells the original, which forgot nothing, from the noise floor
    assert rows["original"]["ulira_auc"] > rows["retrain"]["ulira_auc"]
    assert rows["original"]["klom_forget"] > rows["retrain"]["klom_forget"]
    assert rows["retrain"]["forget_acc"] == 0.0


@pytest.mark.slow
def test_survey_audit_with_three_models(local_ray, tmp_path):
    report = survey.run(build(survey.Config, SURVEY), tmp_path, progress=False)
    parts = {}
    for row in report["results"]:
        parts.setdefault((row["part"], row["forget"]), []).append(row)
    assert set(parts) == {("forget-sets", "class [0]"), ("forget-sets", "random 0.05"), ("convex", "random 0.1")}
    check_rows(parts["forget-sets", "class [0]"], ["finetune", "bad_teacher"], [])
    check_rows(parts["convex", "random 0.1"], ["certified_removal"], [])
    md = (tmp_path / "report.md").read_text()
    assert "label-count study is not audited" in md
    assert (tmp_path / "forget-sets" / "report.md").is_file() and (tmp_path / "convex" / "report.md").is_file()
