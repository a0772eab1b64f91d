"""The forgetting audit end to end on digits: ensembles as real Ray tasks, every field in every row."""

import json

import pytest

from fedunlearn.cli import load_experiment
from fedunlearn.config import apply_overrides, build
from fedunlearn.errors import ConfigError
from fedunlearn.experiments import centralized
from fedunlearn.audit.report import AUDIT_FIELDS

CONFIG = {
    "kind": "centralized",
    "experiment": {"name": "audit-test", "methods": ["finetune", "salun"]},
    "data": {"name": "digits", "val_size": 150},
    "model": {"name": "mlp", "hidden": 32},
    "train": {"epochs": 12, "batch_size": 64, "lr": 0.05},
    "eval": {"mia_max_samples": 200},
    "methods": {"finetune": {"epochs": 1}, "salun": {"epochs": 1}},
    "audit": {"models": 4, "forget": [{"kind": "class", "classes": [3]}]},
}


def test_audit_config_is_checked_before_work():
    with pytest.raises(ConfigError, match="at least 3"):
        build(centralized.Config, apply_overrides(json.loads(json.dumps(CONFIG)), ["audit.models=2"]))
    with pytest.raises(ConfigError, match="method"):
        build(centralized.Config, apply_overrides(json.loads(json.dumps(CONFIG)), ['audit.methods=["nope"]']))
    with pytest.raises(ConfigError, match="forget"):
        build(centralized.Config, apply_overrides(json.loads(json.dumps(CONFIG)), ['audit.forget=[{kind="class", bad=1}]']))


def test_shipped_audit_config_validates():
    _, cfg = load_experiment("simulations/audit.toml", [])
    assert cfg.audit.models == 8 and {f.kind for f in cfg.audit.forget} == {"class", "subpopulation"}


@pytest.mark.slow
def test_audit_on_digits_tells_original_from_retrain(local_ray, tmp_path):
    cfg = build(centralized.Config, CONFIG)
    report = centralized.run(cfg, tmp_path, progress=False)
    rows = {r["method"]: r for r in report["results"]}
    assert list(rows) == ["original", "finetune", "salun", "retrain"]
    for row in rows.values():
        for field in AUDIT_FIELDS + ["test_acc", "test_acc_std", "forget_acc", "mia_efficacy", "avg_gap", "speedup"]:
            assert field in row, (row["method"], field)
        assert row["models"] == 4
    # The audit can tell a model that did not forget: the original is far above the noise floor.
    assert rows["original"]["ulira_auc"] > rows["retrain"]["ulira_auc"] + 0.2
    floor = rows["retrain"]
    assert 0.35 < floor["ulira_null_mean"] < 0.65 and floor["ulira_null_sd"] > 0
    assert rows["original"]["ulira_auc"] > floor["ulira_null_mean"] + 2 * floor["ulira_null_sd"]
    assert rows["original"]["klom_forget"] > 5 * rows["retrain"]["klom_forget"]
    assert rows["original"]["forget_acc"] > 0.9 and rows["retrain"]["forget_acc"] == 0.0
    assert (tmp_path / "audit_class_3.png").is_file()
    assert "noise floor" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_interrupted_audit_resumes_from_member_checkpoints(local_ray, tmp_path):
    small = json.loads(json.dumps(CONFIG))
    small["experiment"]["methods"] = ["finetune"]
    small["train"]["epochs"] = 4
    small["audit"]["models"] = 3
    cfg = build(centralized.Config, small)
    first = centralized.run(cfg, tmp_path, progress=False)
    stored = {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").glob("audit-*.pt")}
    # 3 originals trained, then per forget set 3 + 3 retrains, 3 finetunes, 3 original probes
    assert len(stored) == 3 + 12
    (tmp_path / "report.json").unlink()
    second = centralized.run(cfg, tmp_path, progress=False)
    # Nothing was trained or unlearned again: no checkpoint was written, and the rows are the same.
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").glob("audit-*.pt")} == stored
    assert json.dumps(second["results"], sort_keys=True) == json.dumps(first["results"], sort_keys=True)
    # Another method setting is another member: only its three runs are new.
    cfg = build(centralized.Config, apply_overrides(small, ["methods.finetune.epochs=2"]))
    centralized.run(cfg, tmp_path, progress=False)
    assert len(list((tmp_path / "checkpoints").glob("audit-*.pt"))) == len(stored) + 3
