"""A stream of withdrawals on a tiny digits federation (in-process transport, the server's Ray
worker): one report row per (request, method), withdrawn clients in no later round, a purge and
a deletion-record entry per request, resume from checkpoints, and early errors."""

from __future__ import annotations

import json

import pytest

from fedunlearn import record
from fedunlearn.config import build
from fedunlearn.errors import ConfigError, WithdrawalError
from fedunlearn.federated.client import attackers, federation_data, stream_requests
from fedunlearn.federated.config import Config
from fedunlearn.federated.driver import serve
from fedunlearn.federated.resources import ServerWorker
from fedunlearn.federated.transport import LocalTransport
from tiny_federation import tiny_federation

METHODS = ["retrain", "subtract", "continue"]


def stream(*requests: dict, **sections) -> Config:
    sections["federation"] = {"num_clients": 4, "rounds": 3, **sections.get("federation", {})}
    mapping = tiny_federation("stream", METHODS, {"continue": {"rounds": 1}}, **sections)
    mapping["model"] = {"name": "mlp", "hidden": 16}
    mapping["withdrawal"] = {"requests": list(requests)}
    return build(Config, mapping)


class LoggedTransport(LocalTransport):
    """The in-process transport, noting who each training call went to."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls: list[tuple[str, list[int]]] = []

    def train(self, client_ids, state, config):
        self.calls.append((str(config.get("phase")), list(client_ids)))
        return super().train(client_ids, state, config)


def test_stream_requests_resolve_rules_among_the_clients_still_in():
    cfg = stream({"client": "median", "round": 1, "backdoor": True}, {"client": "median", "round": 2})
    (first, _, _), (second, _, _) = stream_requests(cfg)
    sizes = [len(p) for p in federation_data(cfg)[1]]
    assert first != second and sizes  # "median" twice names two clients
    assert attackers(cfg) == {first}


@pytest.mark.parametrize("requests, words", [
    ([{"client": 1, "round": 1}, {"client": 1, "round": 2}], "already withdrawn"),
    ([{"client": 1, "round": 2}, {"client": 2, "round": 1}], "round order"),
    ([{"client": 1, "round": 4}], "after the last training round"),
    ([{"client": 7, "round": 1}], "clients 0..3"),
    ([{"client": 0, "round": 1}, {"client": 1, "round": 1}, {"client": 2, "round": 1}, {"client": 3, "round": 2}],
     "no client"),
])
def test_bad_streams_fail_when_the_config_is_built(requests, words):
    with pytest.raises(ConfigError, match=words):
        stream(*requests)


def test_a_stream_and_after_round_together_and_a_later_long_training_attacker_are_errors():
    mapping = tiny_federation("stream", METHODS, {})
    mapping["withdrawal"] = {"after_round": 1, "requests": [{"client": 1, "round": 1}]}
    with pytest.raises(ConfigError, match="not both"):
        build(Config, mapping)
    with pytest.raises(ConfigError, match="only the first"):
        stream({"client": 1, "round": 1}, {"client": 2, "round": 2, "backdoor": True}, backdoor={"local_epochs": 2})
    with pytest.raises(ConfigError, match="only the first"):  # a durable (masked) attacker alike
        stream({"client": 1, "round": 1}, {"client": 2, "round": 2, "backdoor": True}, backdoor={"mask_top": 0.01})


def test_a_rule_that_repeats_an_id_fails_before_training():
    cfg = stream({"client": 2, "round": 1}, {"client": "largest", "round": 2})
    largest = max(range(4), key=lambda c: (len(federation_data(cfg)[1][c]), -c))
    bad = stream({"client": "largest", "round": 1}, {"client": largest, "round": 2})
    with pytest.raises(WithdrawalError, match="already withdrawn"):
        stream_requests(bad)


@pytest.mark.slow
@pytest.mark.parametrize("history", ["memory", "disk"])
def test_every_method_handles_each_request_while_training_goes_on(tmp_path, history):
    cfg = stream({"client": 0, "round": 1, "backdoor": True}, {"client": "median", "round": 3},
                 federation={"history": history})
    (c1, r1, _), (c2, r2, _) = stream_requests(cfg)
    transport = LoggedTransport(cfg)
    with ServerWorker(0.0, cpus=0.0) as server:
        report = serve(cfg, transport, tmp_path, progress=False, server=server)
    rows = report["results"]
    assert [(r["request"], r["round"], r["client"], r["method"]) for r in rows] == [
        (k, rnd, c, m) for k, rnd, c in ((1, r1, c1), (2, r2, c2)) for m in ["original", *METHODS]]
    for k in (1, 2):
        retrain = next(r for r in rows if r["request"] == k and r["method"] == "retrain")
        assert retrain["speedup"] == pytest.approx(1.0) and retrain["rounds"] == (r1, r2)[k - 1]
    # client 0 trains only in the first r1 rounds; the second client in no unlearning round of its request
    assert all(c1 in ids for _, ids in transport.calls[:r1])
    assert all(c1 not in ids for _, ids in transport.calls[r1:])
    trained_2 = [ids for phase, ids in transport.calls[r1:] if phase == "train"]
    assert len(trained_2) == r2 and all(c2 in ids for ids in trained_2)  # the federation went on without c1
    after = transport.calls[max(i for i, (phase, _) in enumerate(transport.calls) if phase == "train") + 1:]
    assert after and all(c2 not in ids and c1 not in ids for _, ids in after)
    # one purge and one record entry per request
    assert [p["client"] for p in report["purge"]] == [c1, c2] and all(p["purged"] for p in report["purge"])
    assert report["purge"][1]["histories"] == 2  # the second client is deleted from both stored histories
    log = tmp_path / "deletions.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["client"] for e in entries] == [c1, c2] and record.verify(log)[0]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["requests"][0]["backdoor"] and not saved["requests"][1]["backdoor"]
    assert saved["columns"][:4] == ["request", "round", "client", "method"]
    md = (tmp_path / "report.md").read_text()
    assert "Request 1 (after round" in md and "Request 2 (after round" in md and (tmp_path / "curves.png").exists()
    # a rerun resumes: no training at all, the same rows
    again = LoggedTransport(cfg)
    with ServerWorker(0.0, cpus=0.0) as server:
        second = serve(cfg, again, tmp_path, progress=False, server=server)
    assert again.calls == []
    assert [r["test_acc"] for r in second["results"]] == [r["test_acc"] for r in rows]


def test_the_shipped_stream_config_builds_and_names_three_clients():
    from fedunlearn.cli import load_experiment

    _, cfg = load_experiment("simulations/withdrawal_stream.toml", [])
    requests = stream_requests(cfg)
    assert len({c for c, _, _ in requests}) == 3 and [b for _, _, b in requests] == [True, False, False]
    assert attackers(cfg) == {requests[0][0]}


@pytest.mark.slow
def test_a_stream_on_flowers_simulation_engine(local_ray, tmp_path):
    """The same stream through `fedunlearn run`'s path: ClientApps on Flower's Ray simulation engine
    rebuild their data (and the attacker) from the config's requests."""
    from fedunlearn.experiments import federated as experiment

    cfg = stream({"client": 0, "round": 1, "backdoor": True}, {"client": 2, "round": 2})
    report = experiment.run(cfg, tmp_path, progress=False)
    assert report["columns"][:3] == ["request", "round", "client"]
    rows = [(r["request"], r["client"], r["method"]) for r in report["results"]]
    assert rows == [(k, c, m) for k, c in ((1, 0), (2, 2)) for m in ["original", *METHODS]]
    first = {r["method"]: r for r in report["results"] if r["request"] == 1}
    assert first["retrain"]["messages_to_remaining"] == 3 * 1  # 3 clients remain, 1 round
    assert len((tmp_path / "deletions.jsonl").read_text().splitlines()) == 2
