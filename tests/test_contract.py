"""The method contract: a method defined outside the package (this test module, registered at
run time) gets every hook in every experiment kind with no other edit.

This module is itself the toy centralized method (module-level `Config`, `unlearn` and hooks);
Ray workers import it by name (tests/ is on their path, see conftest.local_ray). The toy
federated method is a module built at run time: the federated kind runs methods in the
ServerApp, which lives in this process.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass

import pytest

from fedunlearn.cli import main
from fedunlearn.config import build
from fedunlearn.contract import MethodResult, as_result, class_forgetting_only, cooperative, hook, supports
from fedunlearn.experiments import EXPERIMENTS
from fedunlearn.federated.methods import FED_METHODS
from fedunlearn.unlearn import METHODS
from tiny_federation import tiny_federation
from toy_method import registered

# --- the toy centralized method: this module ------------------------------------------------

CLASS_FORGETTING_ONLY = True  # so the survey's random part must skip it


@dataclass(frozen=True)
class Config:
    scale: float = 1.0


def unlearn(task, cfg: Config):
    """toy: returns a copy of the original model (a method that forgets nothing)."""
    return MethodResult(copy.deepcopy(task.original), {"toy_forget_size": float(len(task.forget)),
                                                       "toy_scale": cfg.scale})


def prepare(task, cfg: Config) -> dict:
    return {"toy_prepared": 1.0}


def diagnose(task, cfg: Config, model) -> dict:
    return {"toy_diagnosed": float(len(task.retain))}


def benchmark(task, cfg: Config, result: dict) -> dict:
    return {"toy_benchmarked": float(result["wall_s"] >= 0)}


@pytest.fixture
def toy():
    METHODS.register("toy", __name__)
    yield "toy"
    METHODS.unregister("toy")


DIGITS = {"data": {"name": "digits"}, "model": {"name": "mlp", "hidden": 16}, "train": {"epochs": 2, "batch_size": 64},
          "eval": {"mia_max_samples": 100}, "methods": {"toy": {"scale": 2.0}}}


def test_contract_accessors_and_result_normalisation():
    module = sys.modules[__name__]
    assert hook(module, "prepare") is prepare and hook(module, "warm_up") is None
    assert class_forgetting_only(module) and not cooperative(module)
    with pytest.raises(ValueError, match="unknown method hook"):
        hook(module, "prepar")
    model, stats = as_result(("m", {"a": 1}))  # a plain 2-tuple is normalised
    assert isinstance(as_result(("m", {})), MethodResult) and model == "m" and stats == {"a": 1}


def test_restrictions_are_read_through_the_contract():
    from fedunlearn.graph import GRAPH_METHODS

    gnndelete, gif = GRAPH_METHODS.get("gnndelete"), GRAPH_METHODS.get("gif")
    assert supports(gnndelete, "MODELS", "gcn") and not supports(gnndelete, "MODELS", "sgc")
    assert not supports(gnndelete, "TARGETS", "features") and supports(gif, "TARGETS", "features")
    assert supports(sys.modules[__name__], "MODELS", "anything")  # no restriction declared
    with pytest.raises(ValueError, match="unknown method restriction"):
        supports(gif, "MODEL", "gcn")


def test_toy_method_is_listed(toy, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out
    for title, name in [("graph methods:", "gnndelete"), ("feature/label methods:", "second_order")]:
        assert title in out and name in out.split(title)[1]


def test_toy_method_in_the_centralized_kind(toy, tmp_path):
    module = EXPERIMENTS.get("centralized")
    cfg = build(module.Config, {**DIGITS, "experiment": {"methods": ["retrain", "toy"], "benchmark": True},
                                "forget": {"kind": "class", "classes": [1]}})
    rows = {r["method"]: r for r in module.run(cfg, tmp_path, progress=False)["results"]}
    row = rows["toy"]
    assert row["toy_scale"] == 2.0 and row["toy_forget_size"] > 0  # its [methods.toy] section reached it
    assert row["toy_prepared"] == 1.0 and "prepare_s" in row and row["toy_diagnosed"] > 0 and row["toy_benchmarked"] == 1
    assert row["forget_acc"] == rows["original"]["forget_acc"]  # a copy of the original forgets nothing


@pytest.mark.slow
def test_toy_method_in_the_cluster_kind(toy, local_ray, tmp_path):
    module = EXPERIMENTS.get("cluster")
    cfg = build(module.Config, {**DIGITS, "experiment": {"methods": ["retrain", "toy"],
                                                         "forget": [{"name": "one", "kind": "indices", "indices": [7]}]}})
    rows = {r["method"]: r for r in module.run(cfg, tmp_path, progress=False)["results"]}
    row = rows["toy"]
    assert row["toy_scale"] == 2.0 and row["toy_forget_size"] == 1.0
    assert row["toy_prepared"] == 1.0 and row["toy_diagnosed"] > 0 and row["toy_benchmarked"] == 1
    assert "cpu_s" in row and "speedup" in row


def test_toy_method_in_the_survey_kind(toy, tmp_path):
    exclude = [m for m in METHODS.names() if m not in ("retrain", "toy")]
    args = ["run", "simulations/survey.toml", "-q", "--out", str(tmp_path)]
    for item in ["data.name=digits", "data.train_size=0", "data.test_size=0", "model.name=mlp", "model.hidden=16",
                 "train.epochs=2", "train.batch_size=64", f"experiment.exclude={exclude}",
                 "experiment.parts=['class', 'random']", "eval.mia_max_samples=100"]:
        args += ["--set", item]
    assert main(args) == 0
    rows = json.loads((tmp_path / "report.json").read_text())["results"]
    assert [r["method"] for r in rows if r["part"] == "class"] == ["original", "retrain", "toy"]
    assert "toy" not in [r["method"] for r in rows if r["part"] == "random"]  # CLASS_FORGETTING_ONLY
    assert next(r for r in rows if r["method"] == "toy")["toy_diagnosed"] > 0


# --- the toy federated method: a module made at run time ----------------------------------------

TOY_FED = '''
"""toy_fed: keeps the global model and asks every remaining client for one round."""
from dataclasses import dataclass
from fedunlearn.federated.context import FedResult

@dataclass(frozen=True)
class Config:
    rounds: int = 1

def unlearn(ctx, cfg):
    state = ctx.global_state
    for _ in range(cfg.rounds):
        state = ctx.fit(ctx.remaining, state).state
    return FedResult(state, cfg.rounds, [state], {"toy_remaining": float(len(ctx.remaining))})

def diagnose(ctx, cfg, result):
    return {"toy_fed_diagnosed": float(result.rounds)}
'''


@pytest.fixture
def toy_fed():
    with registered(FED_METHODS, "toy_fed", TOY_FED) as name:
        yield name


@pytest.mark.slow
def test_toy_method_in_the_federated_kind(toy_fed, local_ray, tmp_path):
    module = EXPERIMENTS.get("federated")
    cfg = build(module.Config, tiny_federation("toy", ["retrain", "toy_fed"], {"toy_fed": {"rounds": 1}}))
    rows = {r["method"]: r for r in module.run(cfg, tmp_path, progress=False)["results"]}
    row = rows["toy_fed"]
    assert row["rounds"] == 1 and row["toy_remaining"] == 2.0 and row["toy_fed_diagnosed"] == 1.0
    assert row["messages_to_remaining"] == 2 and row["messages_to_departing"] == 0
