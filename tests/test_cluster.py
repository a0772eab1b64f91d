"""The cluster layer and the cluster runner, on a real local Ray with digits and an MLP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from fedunlearn.cli import load_experiment
from fedunlearn.cluster import ClusterConfig, choose_resources, fan_out, ray_session, tasks_that_fit, worker_device
from fedunlearn.config import apply_overrides, build
from fedunlearn.data import DataConfig, load_dataset
from fedunlearn.errors import ConfigError
from fedunlearn.experiments import EXPERIMENTS
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, train


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


# --- resource choice (pure) -------------------------------------------------------------

def test_cpu_cluster_gets_cpu_tasks():
    res = choose_resources(ClusterConfig(), {"CPU": 2.0})
    assert (res.num_cpus, res.num_gpus, res.slots) == (1.0, 0.0, 2)


def test_gpu_cluster_gets_gpu_fractions():
    res = choose_resources(ClusterConfig(tasks_per_gpu=4), {"CPU": 16.0, "GPU": 1.0})
    assert res.num_gpus == 0.25 and res.slots == 4
    res = choose_resources(ClusterConfig(tasks_per_gpu=2), {"CPU": 16.0, "GPU": 2.0})
    assert res.num_gpus == 0.5 and res.slots == 4


def test_overrides_and_worker_cap():
    assert choose_resources(ClusterConfig(gpus_per_task=0), {"CPU": 8.0, "GPU": 1.0}).num_gpus == 0
    assert choose_resources(ClusterConfig(cpus_per_task=2), {"CPU": 8.0}).slots == 4
    assert choose_resources(ClusterConfig(workers=3), {"CPU": 8.0}).slots == 3


def test_tasks_that_fit_a_node():
    assert tasks_that_fit({"CPU": 4.0, "GPU": 1.0}, 1.0, 0.25) == 4
    assert tasks_that_fit({"CPU": 2.0, "GPU": 1.0}, 1.0, 0.25) == 2     # CPUs run out first
    assert tasks_that_fit({"CPU": 0.0, "GPU": 1.0}, 1.0, 0.25) == 0     # a head node with --num-cpus=0
    assert tasks_that_fit({"CPU": 8.0}, 1.0, 0.5) == 0                  # no GPU for a GPU task
    assert tasks_that_fit({"GPU": 1.0}, 0.0, 1 / 3) == 3                # fractions that do not sum exactly


def test_gpu_request_without_gpu_is_an_error():
    with pytest.raises(ConfigError, match="gpus_per_task"):
        choose_resources(ClusterConfig(gpus_per_task=0.5), {"CPU": 2.0})


def test_bad_cluster_values_name_the_key():
    with pytest.raises(ConfigError, match="cluster.cpus_per_task"):
        build(ClusterConfig, {"cpus_per_task": -1})
    with pytest.raises(ConfigError, match="unknown config key 'cluster.gpu'"):
        build(ClusterConfig, {"gpu": 1}, "cluster")


# --- fan-out on the running cluster ------------------------------------------------------

def _square_plus(x, shared):
    return x * x + shared["offset"]


def _fail(x):
    raise ValueError(f"bad input {x}")


def _device_name():
    return worker_device().type, torch.get_num_threads()


def test_session_attaches_to_the_running_ray():
    with ray_session(ClusterConfig()):
        assert ray.is_initialized()
    assert ray.is_initialized()  # not ours to shut down


def test_fan_out_keeps_order_and_resolves_shared_refs():
    shared = ray.put({"offset": 1})  # stored once, handed to every task
    assert fan_out(_square_plus, [(i, shared) for i in range(6)]) == [i * i + 1 for i in range(6)]
    assert fan_out(_square_plus, [(i, shared) for i in range(3)], max_parallel=1) == [1, 2, 5]
    assert fan_out(_square_plus, []) == []


def test_fan_out_raises_the_task_error():
    with pytest.raises(ValueError, match="bad input 3"):
        fan_out(_fail, [(3,)])


def test_tasks_run_on_cpu_with_one_thread_here():
    assert fan_out(_device_name, [()]) == [("cpu", 1)]


def _train_once_killed(marker: str, seed: int):
    """Dies (like a worker lost with its node) on its first attempt; Ray reruns it."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return _train_small(seed)


def _train_small(seed: int) -> dict:
    data = load_dataset(DataConfig(name="digits"), 0)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name="mlp", hidden=16), data.input_shape, 10)
    train(model, data.train.subset(np.arange(300)), TrainConfig(epochs=2), torch.device("cpu"), seed=seed,
          progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_killed_worker_is_retried_with_the_same_result(tmp_path):
    marker = tmp_path / "attempted"
    (killed,) = fan_out(_train_once_killed, [(str(marker), 3)], ClusterConfig(max_retries=2))
    assert marker.exists()  # the first attempt did run and die
    (clean,) = fan_out(_train_small, [(3,)])
    assert all(torch.equal(killed[k], clean[k]) for k in clean)


# --- the cluster runner ----------------------------------------------------------------

TINY = {
    "kind": "cluster",
    "experiment": {"name": "tiny", "seeds": [0, 1], "methods": ["retrain", "finetune", "amun", "sisa"],
                   "parallel_runs": 2,
                   "forget": [{"name": "one", "kind": "indices", "indices": [7]},
                              {"name": "cont", "kind": "random", "fraction": 0.03, "requests": 3}]},
    "data": {"name": "digits"},
    "model": {"name": "mlp", "hidden": 32},
    "train": {"epochs": 4, "batch_size": 64},
    "eval": {"mia_max_samples": 100},
    "methods": {"sisa": {"shards": 2, "slices": 2, "epochs_per_slice": 2, "compare_one_worker": False},
                "amun": {"steps": 5, "epochs": 2, "max_doublings": 5}},
}


@pytest.mark.slow
def test_runner_grid_continual_and_resume(tmp_path):
    module = EXPERIMENTS.get("cluster")
    cfg = build(module.Config, json.loads(json.dumps(TINY)))
    first = module.run(cfg, tmp_path, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["results"]
    # every method on every spec; the continual spec has a row per request (retrain: once, at the end)
    for method in ["original", "retrain", "finetune", "amun", "sisa"]:
        assert [r["request"] for r in rows if r["method"] == method and r["forget"] == "one"] == [1]
    assert [r["request"] for r in rows if r["method"] == "amun" and r["forget"] == "cont"] == [1, 2, 3]
    assert [r["request"] for r in rows if r["method"] == "retrain" and r["forget"] == "cont"] == [3]
    for row in rows:
        assert row["seeds"] == 2
        for key in ("test_acc", "retain_acc", "forget_acc", "mia_efficacy", "mia_auc", "avg_gap", "wall_s", "speedup",
                    "cpu_s"):
            assert key in row and f"{key}_std" in row
    assert len(report["runs"]) == 2 * len(rows)
    sisa_one = next(r for r in rows if r["method"] == "sisa" and r["forget"] == "one")
    assert sisa_one["shards_retrained"] == 1 and "full_sisa_s" in sisa_one and "predicted_speedup" in sisa_one
    assert "search_1worker_s" in next(r for r in rows if r["method"] == "amun" and r["forget"] == "one")
    assert (tmp_path / "continual_cont.png").is_file()
    assert "## sisa: details" in (tmp_path / "report.md").read_text()

    # A second run finds every checkpoint: nothing is retrained, so the timings are the stored ones.
    again = module.run(cfg, tmp_path, progress=False)
    assert [r["wall_s"] for r in again["runs"]] == [r["wall_s"] for r in first["runs"]]


def test_runner_rejects_bad_configs():
    module = EXPERIMENTS.get("cluster")
    with pytest.raises(ConfigError, match="unknown method 'sisaa'"):
        build(module.Config, apply_overrides(json.loads(json.dumps(TINY)), ['experiment.methods=["sisaa"]']))
    with pytest.raises(ConfigError, match="methods.amun"):
        build(module.Config, apply_overrides(json.loads(json.dumps(TINY)), ["methods.amun.steps=0"]))
    with pytest.raises(ConfigError, match="forget.requests"):
        build(module.Config, apply_overrides(json.loads(json.dumps(TINY)), ["experiment.seeds=[0]"]) | {
            "experiment": {"forget": [{"kind": "random", "requests": 0}]}})


@pytest.mark.parametrize("name", ["sisa", "amun"])
def test_shipped_configs_validate(name):
    module, cfg = load_experiment(str(Path(__file__).parents[1] / "simulations" / f"{name}.toml"), [])
    assert cfg.kind == "cluster" and name in cfg.experiment.methods and "retrain" in cfg.method_names()
    assert cfg.data.name == "fashion-mnist"
