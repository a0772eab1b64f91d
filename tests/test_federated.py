"""The federated withdrawal experiment on a real Flower simulation (Ray backend): 3 clients on
`digits`, 2 FedAvg rounds, every baseline method end to end, message counting, a failing client
and bad withdrawals. One simulation is shared by most tests (module-scoped fixture)."""

from __future__ import annotations

import json
import math
import os

import pytest

from fedunlearn.cli import main as cli_main
from fedunlearn.config import build
from fedunlearn.errors import WithdrawalError
from fedunlearn.experiments import federated as experiment
from fedunlearn.federated.config import Config
from tiny_federation import tiny_federation

METHODS = ["retrain", "continue", "federaser", "pga", "subtract"]


def tiny(**sections) -> dict:
    return tiny_federation("tiny", METHODS, {"continue": {"rounds": 1}, "pga": {"post_rounds": 1}}, **sections)


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Client 1 raises in training round 2: the round must go on with the other two."""
    out = tmp_path_factory.mktemp("withdrawal")
    cfg = build(Config, tiny(federation={"fail_client": 1, "fail_round": 2}))
    report = experiment.run(cfg, out, progress=False)
    LEFT_AFTER_RUN.update(ray_actors_alive())
    return out, report, {r["method"]: r for r in report["results"]}


LEFT_AFTER_RUN: dict[str, str] = {}  # Ray actors still alive right after the shared run


def ray_actors_alive() -> dict[str, str]:
    """Alive actors of the Ray this process is attached to (none when Ray is down: Flower's
    simulation shuts down the Ray it ran on)."""
    import time

    import ray
    import ray._private.state as state

    if not ray.is_initialized():
        return {}
    deadline = time.monotonic() + 30  # a killed actor takes a moment to be marked DEAD
    alive = {}
    while time.monotonic() < deadline:
        alive = {k: a["ActorClassName"] for k, a in state.actors().items() if a["State"] == "ALIVE"}
        if not alive:
            break
        time.sleep(0.5)
    return alive


@pytest.mark.slow
def test_training_writes_the_report(sim):
    out, report, rows = sim
    assert (out / "report.md").is_file() and (out / "curves.png").is_file()
    saved = json.loads((out / "report.json").read_text())
    assert list(rows) == ["original", *METHODS]
    assert saved["history_bytes"] > 0 and saved["stored_rounds"] == [1, 2]
    for column in ("test_acc", "retain_acc", "forget_acc", "backdoor_asr", "mia_efficacy", "mia_auc",
                   "js_to_retrain", "avg_gap", "wall_s", "rounds"):
        for name, row in rows.items():
            assert math.isfinite(row[column]), (name, column)
    for name in METHODS:
        for column in ("speedup", "messages_to_remaining", "bytes_to_remaining"):
            assert column in rows[name], (name, column)
    assert rows["retrain"]["speedup"] == pytest.approx(1.0)
    assert rows["retrain"]["js_to_retrain"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_a_failing_client_does_not_stop_the_round(sim):
    out, report, rows = sim
    saved = json.loads((out / "report.json").read_text())
    assert saved["train_failures"] == [[2, 1]]
    log = saved["round_log"]  # every round says how many clients it used, and why any is missing
    assert [(r["round"], r["sent"], r["used"]) for r in log] == [(1, 3, 3), (2, 3, 2)]
    assert "fails in round 2" in log[1]["failed"]["1"]
    assert "client failures during training" in (out / "report.md").read_text()
    # client 1 missed round 2, so the stored round 2 holds only client 2 (client 0 left): one
    # calibration message instead of two
    assert rows["federaser"]["messages_to_remaining"] == 2 + 1


@pytest.mark.slow
def test_messages_are_counted_per_method(sim):
    _, _, rows = sim
    assert rows["subtract"]["messages_to_remaining"] == 0 and rows["subtract"]["bytes_to_remaining"] == 0
    assert rows["subtract"]["messages_to_departing"] == 0 and rows["subtract"]["rounds"] == 0
    assert rows["continue"]["messages_to_remaining"] == 2 and rows["continue"]["bytes_to_remaining"] > 0
    assert rows["retrain"]["messages_to_remaining"] == 2 * 2 and rows["retrain"]["messages_to_departing"] == 0
    assert rows["pga"]["messages_to_departing"] == 1 and rows["pga"]["messages_to_remaining"] == 2
    per_model = rows["continue"]["bytes_to_remaining"] / 2
    assert rows["retrain"]["bytes_to_remaining"] == pytest.approx(4 * per_model)


@pytest.mark.slow
def test_unlearning_changes_the_model_and_resumes_from_checkpoints(sim, tmp_path):
    out, _, rows = sim
    assert rows["subtract"]["js_to_retrain"] != rows["original"]["js_to_retrain"]
    assert rows["pga"]["ascent_steps"] >= 0 and rows["pga"]["radius"] > 0
    assert len(list((out / "checkpoints").glob("method-*.pt"))) == len(METHODS)


@pytest.mark.slow
def test_offline_departing_client(tmp_path):
    # the request arrives after round 1 of 2: training stops there, retrain reruns 1 round
    offline = tiny(withdrawal={"departing_online": False, "after_round": 1}, experiment={"methods": ["retrain", "pga"]})
    with pytest.raises(WithdrawalError, match="offline|departing_online"):
        experiment.run(build(Config, offline), tmp_path / "coop", progress=False)
    # absent mode: methods that never ask the departing client still work
    offline["experiment"]["methods"] = ["retrain", "subtract"]
    report = experiment.run(build(Config, offline), tmp_path / "absent", progress=False)
    rows = {r["method"]: r for r in report["results"]}
    assert list(rows) == ["original", "retrain", "subtract"]
    assert rows["original"]["rounds"] == 1 and rows["retrain"]["rounds"] == 1


def test_bad_withdrawals_are_clear_errors(tmp_path, capsys):
    with pytest.raises(WithdrawalError, match="clients 0..2"):
        build(Config, tiny(withdrawal={"client": 3}))
    with pytest.raises(WithdrawalError, match="clients 0..2"):
        build(Config, tiny(withdrawal={"client": -1}))
    config = tmp_path / "bad.toml"
    config.write_text('kind = "federated"\n[data]\nname = "digits"\n[federation]\nnum_clients = 3\n'
                      '[withdrawal]\nclient = 7\n')
    assert cli_main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "cannot withdraw client 7" in capsys.readouterr().err


def test_server_worker_is_one_ray_process_reused_across_calls():
    from fedunlearn.federated.resources import ServerWorker

    def threads_and_pid():  # nested: pickled by value, so Ray workers need not import this file
        import os

        import torch

        return torch.get_num_threads(), os.getpid()

    with ServerWorker(cpus=1.0) as worker:
        threads, pid = worker.run(threads_and_pid)
        assert pid != os.getpid() and threads == 1  # as many threads as the CPUs it reserved
        assert worker.reserved_cpus == 1.0
        assert worker.run(threads_and_pid)[1] == pid  # the same warm process, not a new one per call


def test_no_ray_actor_is_left_after_the_run(sim):
    assert not LEFT_AFTER_RUN  # Flower's client actors and the server worker are gone
