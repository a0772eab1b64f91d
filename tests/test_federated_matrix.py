"""The scenario matrix on a real local Ray: two tiny digits federations, each its own Ray task;
rows per (scenario, seed, method), the summary, the noise floor (a second retraining per cell,
retrain_alt) and the Pareto plot."""

from __future__ import annotations

import json

import pytest

from fedunlearn.config import build
from fedunlearn.errors import ConfigError
from fedunlearn.experiments import EXPERIMENTS
from fedunlearn.experiments.federated_matrix import Config, merge
from tiny_federation import tiny_federation


def matrix(**scenarios) -> dict:
    base = tiny_federation("cell", ["retrain", "subtract", "replay", "fedrecovery"], {})
    base.pop("kind")
    return {"kind": "federated_matrix", "matrix": {"name": "tiny_matrix", "seeds": [0]}, "base": base,
            "scenarios": scenarios or {"iid": {"federation": {"partition": "iid"}},
                                       "skew": {"federation": {"partition": "dirichlet", "alpha": 0.5,
                                                               "clients_per_round": 2},
                                                "withdrawal": {"client": "largest"}}}}


def test_scenarios_merge_into_the_base_and_bad_ones_fail_early():
    assert merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}, "b": 4}) == {"a": {"x": 1, "y": 3}, "b": 4}
    cfg = build(Config, matrix())
    fed = cfg.federation("skew", 0)
    assert fed.federation.partition == "dirichlet" and fed.federation.num_clients == 3
    assert fed.withdrawal.client == "largest" and fed.experiment.seed == 0
    with pytest.raises(ConfigError, match="scenario 'bad'.*num_clients"):
        build(Config, matrix(bad={"federation": {"num_clients": 1}}))


def test_within_noise_floor_widens_each_tolerance_to_the_second_retrainings_gap():
    from fedunlearn.experiments.matrix_summary import within_noise_floor

    m = build(Config, matrix()).matrix
    ref = {"test_acc": 0.70, "forget_acc": 0.40, "backdoor_asr": 0.01}
    alt = {"test_acc": 0.62, "forget_acc": 0.45, "backdoor_asr": 0.02}   # another retraining: 8 points off
    near = {"test_acc": 0.76, "forget_acc": 0.44, "backdoor_asr": 0.03, "messages_to_remaining": 0}
    assert within_noise_floor(near, ref, alt, m)
    assert not within_noise_floor({**near, "test_acc": 0.79}, ref, alt, m)          # 9 points > 8
    assert not within_noise_floor({**near, "forget_acc": 0.46}, ref, alt, m)        # +6 > max(3, 5)
    assert not within_noise_floor({**near, "backdoor_asr": 0.05}, ref, alt, m)      # +4 > max(3, 1)
    assert not within_noise_floor({**near, "messages_to_remaining": 3}, ref, alt, m)
    assert within_noise_floor({**near, "test_acc": 0.715, "forget_acc": 0.42}, ref, ref, m)  # identical: the targets
    assert not within_noise_floor(near, ref, ref, m)


@pytest.mark.slow
def test_matrix_runs_each_federation_as_a_ray_task(local_ray, tmp_path):
    cfg = build(Config, matrix())
    report = EXPERIMENTS.get("federated_matrix").run(cfg, tmp_path, progress=False)
    data = json.loads((tmp_path / "report.json").read_text())
    rows = data["results"]
    assert {(r["scenario"], r["method"]) for r in rows} >= {("iid", "retrain"), ("skew", "fedrecovery")}
    assert all(r["seed"] == 0 for r in rows)
    summary = {r["method"]: r for r in data["summary"]}
    assert set(summary) == {"original", "retrain", "subtract", "replay", "fedrecovery", "retrain_alt"}
    assert 0.0 <= summary["subtract"]["within_target"] <= 1.0 and summary["subtract"]["cells"] == 2
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "iid" / "seed0" / "report.json").exists()
    assert report["results"] == data["summary"]
    assert set(data["original_asr"]["per_cell"]) == {"iid/seed0", "skew/seed0"} and "backdoor_asr_min" in summary["original"]
    md = (tmp_path / "report.md").read_text().splitlines()  # the summary is a table of its own, not a bullet
    header = md.index("## Summary per method (report.json's `summary`)")
    assert any(line.startswith("| method | cells |") for line in md[header:])
    # the second retraining: a row per cell, judged against retrain, and the noise floor in the summary
    alt = [r for r in rows if r["method"] == "retrain_alt"]
    retrain = {r["scenario"]: r for r in rows if r["method"] == "retrain"}
    assert [r["alt_seed"] for r in alt] == [1000, 1000] and all(isinstance(r["within_target"], bool) for r in alt)
    for r in alt:
        assert r["test_gap"] == pytest.approx(abs(r["test_acc"] - retrain[r["scenario"]]["test_acc"]))
        assert r["rounds"] == retrain[r["scenario"]]["rounds"] and r["speedup"] > 0
    floor = data["noise_floor"]
    assert floor["cells"] == 2 and floor["cells_within_target"] == sum(r["within_target"] for r in alt)
    assert floor["test_gap_max"] == pytest.approx(max(r["test_gap"] for r in alt))
    meets = summary["subtract"]["within_target_where_retrain_alt_meets"]  # null: no cell's targets are met
    assert (0.0 <= meets <= 1.0) if floor["cells_within_target"] else meets is None
    assert any("the ceiling: a retrained model" in line for line in md)
    for r in rows:  # the widened tolerances only widen: within target implies within the noise floor
        if r["method"] in ("subtract", "replay", "fedrecovery"):
            assert isinstance(r["within_noise_floor"], bool) and (r["within_noise_floor"] or not r["within_target"])
    assert 0.0 <= summary["subtract"]["within_noise_floor"] <= 1.0
    assert any(line.startswith("| cell | retrain_test_acc |") for line in md)


def test_retrain_alt_differs_from_retrain_only_in_its_seed(tmp_path):
    """The cell's second retraining, without Ray: from the cell's own seed it reproduces the
    driver's retrain exactly (same data, departing client, rounds, client sampling, local recipe),
    so from another seed only the initial model and the local shuffling differ."""
    from fedunlearn.experiments.federated_matrix import run_cell

    mapping = tiny_federation("alt", ["retrain"], {}, federation={"clients_per_round": 2, "num_clients": 4})
    mapping["withdrawal"] = {"client": "largest"}
    same = run_cell(mapping, str(tmp_path / "same"), alt_seed=0)
    rows = {r["method"]: r for r in same["results"]}
    for key in ("test_acc", "forget_acc", "backdoor_asr", "retain_acc", "mia_efficacy"):
        assert rows["retrain_alt"][key] == rows["retrain"][key], key
    assert rows["retrain_alt"]["messages_to_remaining"] == rows["retrain"]["messages_to_remaining"] > 0
    other = {r["method"]: r for r in run_cell(mapping, str(tmp_path / "same"), alt_seed=5)["results"]}
    assert other["retrain"]["test_acc"] == rows["retrain"]["test_acc"]  # the cell itself came from its checkpoints
    assert other["retrain_alt"]["alt_seed"] == 5
    assert (other["retrain_alt"]["test_acc"], other["retrain_alt"]["forget_acc"]) != (
        rows["retrain"]["test_acc"], rows["retrain"]["forget_acc"])


def test_retrain_twice_is_a_matrix_option():
    assert build(Config, matrix()).matrix.retrain_twice
    off = matrix()
    off["matrix"]["retrain_twice"] = False
    assert not build(Config, off).matrix.retrain_twice
    off["matrix"]["retrain_alt_seed_offset"] = 0
    with pytest.raises(ConfigError, match="retrain_alt_seed_offset"):
        build(Config, off)


@pytest.mark.slow
def test_short_methods_are_timed_over_repeats_on_a_server_that_reserves_its_cpu(local_ray, tmp_path):
    import fedunlearn
    from fedunlearn import checkpoint
    from fedunlearn.federated.config import Config as FedConfig
    from fedunlearn.federated.driver import serve
    from fedunlearn.federated.transport import LocalTransport
    from fedunlearn.federated.resources import ServerWorker

    mapping = tiny_federation("timing", ["retrain", "subtract", "source_free_absent"],
                              {"source_free_absent": {"generator": {"steps": 5, "width": 8},
                                                      "consolidate": {"steps": 5}, "check_samples": 50}})
    cfg = build(FedConfig, mapping)
    with ServerWorker(0.0, cpus=1.0) as server:
        report = serve(cfg, LocalTransport(cfg), tmp_path, progress=False, server=server)
        assert server.reserved_cpus == 1.0
    rows = {r["method"]: r for r in report["results"]}
    assert rows["subtract"]["wall_repeats"] == 3 and rows["subtract"]["wall_s_spread"] >= 0
    assert rows["source_free_absent"]["server_reserved_cpus"] == 1.0
    assert checkpoint.code_key().startswith(fedunlearn.__version__ + "-")
    names = [p.name for p in (tmp_path / "checkpoints").glob("federation-*.pt")]
    assert len(names) == 1


def test_summary_gives_mean_spread_shares_and_the_forgetting_signal():
    cfg = build(Config, matrix())
    rows = []
    for scenario, (retrain, subtract, original_asr) in {"iid": (0.90, 0.89, 0.95), "skew": (0.80, 0.70, 0.60)}.items():
        # the iid original is 5 points below its retrain (the attacker cost it clean accuracy)
        rows += [{"scenario": scenario, "seed": 0, "method": "original", "test_acc": 0.85 if scenario == "iid" else 0.9,
                  "forget_acc": 0.9, "backdoor_asr": original_asr},
                 {"scenario": scenario, "seed": 0, "method": "retrain", "test_acc": retrain, "forget_acc": 0.5,
                  "backdoor_asr": 0.01},
                 {"scenario": scenario, "seed": 0, "method": "subtract", "test_acc": subtract, "forget_acc": 0.5,
                  "backdoor_asr": 0.02, "speedup": 10.0, "messages_to_remaining": 0},
                 # a second retraining: 0.5 points off in iid, 3 in skew; it talks to every client
                 {"scenario": scenario, "seed": 0, "method": "retrain_alt", "test_acc": retrain - (
                     0.005 if scenario == "iid" else 0.03), "forget_acc": 0.5, "backdoor_asr": 0.01, "speedup": 1.0,
                  "messages_to_remaining": 40}]
    from fedunlearn.experiments.matrix_floor import noise_floor
    from fedunlearn.experiments.matrix_summary import cell_rows, original_asr, reach_note, signal_note, summarize

    results = {(r["scenario"], r["seed"]): {"results": []} for r in rows}
    for r in rows:
        results[(r["scenario"], r["seed"])]["results"].append({k: v for k, v in r.items() if k not in ("scenario", "seed")})
    summary = {r["method"]: r for r in summarize(cfg, cell_rows(cfg, cfg.cells(), results))}
    sub = summary["subtract"]
    assert sub["test_acc"] == pytest.approx(0.795) and sub["test_acc_std"] == pytest.approx(0.095)
    assert sub["test_gap"] == pytest.approx(0.055) and sub["test_gap_std"] == pytest.approx(0.045)
    assert sub["within_target"] == 0.5 and sub["within_target_where_subtract_misses"] == 0.0
    assert sub["within_target_where_retrain_alt_meets"] == 1.0 and sub["cells_where_retrain_alt_meets"] == 1
    # only skew's original reaches its retrain; subtract misses there
    assert sub["within_target_where_original_reaches"] == 0.0 and sub["cells_where_original_reaches"] == 1
    assert "1/2 cells (iid/seed0)" in reach_note(cell_rows(cfg, cfg.cells(), results), cfg.matrix)
    assert reach_note([r for r in cell_rows(cfg, cfg.cells(), results) if r["method"] != "original"],
                      cfg.matrix).startswith("no original row")
    alt = summary["retrain_alt"]  # judged on its model, not on its messages
    assert alt["within_target"] == 0.5 and alt["test_gap"] == pytest.approx(0.0175)
    floor = noise_floor(cell_rows(cfg, cfg.cells(), results), cfg.matrix)
    assert floor["cells_within_target"] == 1 and floor["cells_over_test_tolerance"] == ["skew/seed0"]
    assert floor["test_gap_max"] == pytest.approx(0.03) and floor["test_gap_max_cell"] == "skew/seed0"
    assert summary["original"]["backdoor_asr_min"] == 0.60
    signal = original_asr(cell_rows(cfg, cfg.cells(), results), cfg.matrix)
    assert signal["min"] == 0.60 and signal["cells_below_bar"] == ["skew/seed0"]
    assert "skew/seed0" in signal_note(cell_rows(cfg, cfg.cells(), results), cfg.matrix)
