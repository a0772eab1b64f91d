"""Graph unlearning on real small graphs: data (block model, Planetoid files), requests,
partitions, the influence-type methods against fine-tuning, and GraphEraser's shards on a real
local Ray."""

from __future__ import annotations

import dataclasses
import pickle
from collections import defaultdict

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedunlearn.config import build
from fedunlearn.errors import ConfigError, DataError
from fedunlearn.experiments import EXPERIMENTS
from fedunlearn.graph import GRAPH_METHODS
from fedunlearn.graph.data import GraphDataConfig, csbm, load_graph
from fedunlearn.graph.methods import certified, eraser, finetune, gif, retrain
from fedunlearn.graph.metrics import GraphEvaluation
from fedunlearn.graph.models import (GraphModelConfig, GraphTrainConfig, adjacency, build_graph_model, predict,
                                     train_graph)
from fedunlearn.graph.partition import bekm, blpa, cut_share
from fedunlearn.graph.requests import GraphForgetConfig, select_request
from fedunlearn.graph.task import GraphTask
from fedunlearn.metrics.distance import l2_distance
from toy_method import registered

SMALL = GraphDataConfig(nodes=600, features=16)


def write_planetoid(root, name="cora"):
    """A 12-node graph in Planetoid's format: 3 labelled train rows, 9 allx rows, 3 test rows listed out of order."""
    rng = np.random.default_rng(0)
    n_all, n_test, d, k = 9, 3, 5, 3
    feats = rng.random((n_all + n_test, d))
    labels = np.eye(k)[rng.integers(0, k, n_all + n_test)]
    test_index = [11, 9, 10]  # graph ids of the test rows tx[0], tx[1], tx[2]
    tx, ty = feats[test_index], labels[test_index]
    objs = {"x": sp.csr_matrix(feats[:3]), "y": labels[:3], "allx": sp.csr_matrix(feats[:n_all]),
            "ally": labels[:n_all], "tx": sp.csr_matrix(tx), "ty": ty}
    graph = defaultdict(list, {i: [(i + 1) % 12, (i + 5) % 12] for i in range(12)})
    graph[3].append(3)  # a self loop, as the real files have: dropped
    objs["graph"] = graph
    for part, obj in objs.items():
        with open(root / f"ind.{name}.{part}", "wb") as f:
            pickle.dump(obj, f)
    (root / f"ind.{name}.test.index").write_text("\n".join(map(str, test_index)) + "\n")
    return feats, labels


def test_planetoid_files_load_from_data_dir(tmp_path):
    feats, labels = write_planetoid(tmp_path)
    g = load_graph(GraphDataConfig(name="cora", data_dir=str(tmp_path)), seed=0)
    assert g.n == 12 and g.num_classes == 3
    expected = feats / feats.sum(1, keepdims=True)
    assert np.allclose(g.x.numpy(), expected, atol=1e-6)  # test rows back at their graph ids
    assert (g.y.numpy() == labels.argmax(1)).all()
    assert g.train.nonzero().flatten().tolist() == [0, 1, 2]
    assert g.test.nonzero().flatten().tolist() == [9, 10, 11]
    assert not (g.val & g.test).any() and g.val[3:9].all()
    assert g.edges.shape[1] == 24 and (g.edges[0] < g.edges[1]).all()


def test_planetoid_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="ind.citeseer.x"):
        load_graph(GraphDataConfig(name="citeseer", data_dir=str(tmp_path)), seed=0)
    with pytest.raises(ConfigError, match="graph data set 'ogbn'"):
        GraphDataConfig(name="ogbn")


def test_karate_club_ships_with_networkx():
    g = load_graph(GraphDataConfig(name="karate"), seed=0)
    assert g.n == 34 and g.edges.shape[1] == 78 and g.num_classes == 2
    assert int(g.y.sum()) == 17 and g.train.sum() == 17


@pytest.mark.parametrize("name", ["gcn", "sgc", "sage"])
def test_models_learn_the_block_model(name):
    g = csbm(SMALL, 0)
    model = train_graph(build_graph_model(GraphModelConfig(name=name, hidden=16), 16, g.num_classes, 0), g,
                        GraphTrainConfig(epochs=100, lr=0.05))
    acc = float((predict(model, g).argmax(1) == g.y)[g.test].float().mean())
    assert acc > 0.7 and model.embed(g.x, adjacency(g, model.adj_kind)).shape[0] == g.n
    a, b = csbm(SMALL, 3), csbm(SMALL, 3)
    assert torch.equal(a.edges, b.edges) and torch.equal(a.x, b.x)
    same_class = (a.y[a.edges[0]] == a.y[a.edges[1]]).float().mean()
    assert same_class > 0.5 and a.edges.shape[1] > 2 * SMALL.nodes
    assert not (a.train & a.test).any() and (a.train | a.val | a.test).all()


@pytest.mark.parametrize("target", ["nodes", "edges", "features"])
@pytest.mark.parametrize("kind", ["random", "class", "neighbourhood"])
def test_requests(target, kind):
    g = csbm(SMALL, 0)
    req = select_request(g, GraphForgetConfig(target=target, kind=kind, count=8, classes=(1,)), seed=0)
    after = req.apply(g)
    assert 0 < req.size() <= 8
    if target == "edges":
        assert after.edges.shape[1] == g.edges.shape[1] - req.size()
        if kind == "class":
            assert (g.y[g.edges[:, req.edges]] == 1).all()
        return
    assert g.train[req.nodes].all()
    assert (after.x[req.nodes] == 0).all()
    if target == "nodes":
        assert not np.isin(after.edges.numpy(), req.nodes).any() and not after.train[req.nodes].any()
    if kind == "class":
        assert (g.y[req.nodes] == 1).all()
    if kind == "neighbourhood":  # every named node is within one hop of one of them
        near = g.neighbours(req.nodes[:1], hops=1)
        assert np.isin(req.nodes, np.r_[req.nodes[:1], near]).sum() >= 1


def test_partitions_are_balanced_and_blpa_keeps_edges():
    g = csbm(GraphDataConfig(nodes=800, homophily=0.9), 0)
    nodes = np.flatnonzero(g.train.numpy())
    lab = blpa(nodes, g.edges.numpy(), 4, seed=0)
    assert np.bincount(lab, minlength=4).max() <= int(np.ceil(len(nodes) / 4 * 1.1))
    random_cut = cut_share(nodes, np.random.default_rng(0).permutation(np.arange(len(nodes)) % 4), g.edges.numpy())
    assert cut_share(nodes, lab, g.edges.numpy()) < random_cut - 0.2
    emb = g.x[torch.as_tensor(nodes)].numpy()
    lab2 = bekm(emb, 4, seed=0)
    assert np.bincount(lab2, minlength=4).max() <= int(np.ceil(len(nodes) / 4))


def make_task(graph, model_name, request_cfg, workdir="", epochs=200, lr=0.01):
    recipe = GraphTrainConfig(epochs=epochs, lr=lr)
    make_model = lambda: build_graph_model(GraphModelConfig(name=model_name, hidden=16), graph.x.shape[1],  # noqa: E731
                                           graph.num_classes, 0)
    original = train_graph(make_model(), graph, recipe, seed=0)
    req = select_request(graph, request_cfg, 0)
    return GraphTask(original, graph, req.apply(graph), req, recipe, make_model, model_name, 0, str(workdir))


@pytest.mark.parametrize("model_name", ["sgc", "gcn"])
def test_influence_methods_land_closer_to_retraining_than_finetuning(model_name):
    g = csbm(SMALL, 0)
    lr, epochs = (0.2, 300) if model_name == "sgc" else (0.01, 200)
    task = make_task(g, model_name, GraphForgetConfig(target="nodes", kind="neighbourhood", count=10), lr=lr,
                     epochs=epochs)
    ref, _ = retrain.unlearn(task)
    ft, _ = finetune.unlearn(task)
    gi, stats = gif.unlearn(task)
    assert stats["cg_iters"] > 0 and l2_distance(gi, ref) < l2_distance(ft, ref)
    if model_name == "sgc":
        assert l2_distance(gi, ref) < 0.3 * l2_distance(task.original, ref)
        cert, cstats = certified.unlearn(task)
        assert l2_distance(cert, ref) < l2_distance(ft, ref)
        assert 0 < cstats["epsilon"] < float("inf") and cstats["residual_bound"] >= 0
        acc = lambda m: float((predict(m, task.after).argmax(1) == g.y)[task.after.test].float().mean())  # noqa: E731
        assert abs(acc(cert) - acc(ref)) < 0.03


def test_gnndelete_trains_only_its_deletion_operators():
    from fedunlearn.graph.methods import gnndelete

    g = csbm(SMALL, 0)
    task = make_task(g, "gcn", GraphForgetConfig(target="edges", count=4))
    frozen = {k: v.clone() for k, v in task.original.state_dict().items()}
    model, stats = gnndelete.unlearn(task, gnndelete.Config(epochs=30))
    assert all(torch.equal(model.gcn.state_dict()[k], v) for k, v in frozen.items())
    assert not torch.allclose(model.del2.weight, torch.eye(g.num_classes))
    far = ~model.local2  # nodes outside every deleted edge's two-hop neighbourhood keep the original's output
    assert far.sum() > 50
    assert torch.allclose(predict(model, task.after)[far], predict(task.original, task.after)[far], atol=1e-6)
    assert stats["deleted_edges"] == 4


def test_neighbour_accuracy_and_edge_attack():
    g = csbm(SMALL, 0)
    task = make_task(g, "gcn", GraphForgetConfig(target="edges", count=40))
    ev = GraphEvaluation(task.before, task.after, task.request, 0)
    row = ev.evaluate(task.original)
    assert 0 <= row["neighbour_acc"] <= 1 and len(ev.neighbours) > 40
    assert 0.5 < row["edge_mia_auc"] <= 1  # homophily: endpoints of real edges look alike


def test_graph_config_validation():
    module = EXPERIMENTS.get("graph")
    with pytest.raises(ConfigError, match="graph method 'graph_nope'"):
        build(module.Config, {"kind": "graph", "experiment": {"methods": ["graph_nope"]}})
    with pytest.raises(ConfigError, match="shards"):
        build(module.Config, {"kind": "graph", "methods": {"graph_eraser": {"shards": 0}}})
    assert set(GRAPH_METHODS.names()) >= {"graph_retrain", "graph_eraser", "gif", "certified_graph_unlearning"}
    from fedunlearn.cli import load_experiment

    _, shipped = load_experiment("simulations/graph.toml", ["forget=[{target='features', count=3}]"])
    assert set(shipped.experiment.methods) == set(GRAPH_METHODS.names()) and shipped.forget[0].count == 3


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_graph_experiment_end_to_end(tmp_path):
    module = EXPERIMENTS.get("graph")
    cfg = build(module.Config, {
        "kind": "graph", "data": {"nodes": 400, "features": 8}, "train": {"epochs": 40},
        "experiment": {"models": ["gcn", "sgc"]}, "methods": {"graph_eraser": {"shards": 2, "agg_steps": 20}},
        "forget": [{"target": "nodes", "count": 5}, {"target": "features", "kind": "class", "count": 5},
                   {"target": "edges", "kind": "neighbourhood", "count": 10}]})
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.txt").write_text("a user's own file")  # --out may hold one
    report = module.run(cfg, tmp_path, progress=False)
    assert (tmp_path / "work" / "mine.txt").is_file()
    rows = report["results"]
    assert {r["method"] for r in rows if r["model"] == "gcn"} == {
        "original", "graph_retrain", "graph_finetune", "graph_eraser", "gif", "gnndelete", "retrain_other_seed"}
    assert sum(r["method"] == "gnndelete" for r in rows) == 2  # gcn, not the feature request
    assert sum(r["method"] == "certified_graph_unlearning" for r in rows) == 3  # sgc only
    assert all(0 <= r["test_acc"] <= 1 and r["js_x1000"] >= 0 for r in rows)
    assert all("edge_mia_auc" in r for r in rows if r["request"] == "edges-neighbourhood")
    assert (tmp_path / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_graph_eraser_retrains_only_affected_shards_on_ray(tmp_path):
    g = csbm(GraphDataConfig(nodes=800, features=16, homophily=0.9), 0)
    task = make_task(g, "gcn", GraphForgetConfig(target="nodes", kind="neighbourhood", count=3), tmp_path, epochs=100)
    cfg = eraser.Config(shards=4, agg_steps=50)
    prep = eraser.prepare(task, cfg)
    assert prep["prepare_shards"] == 4
    model, stats = eraser.unlearn(task, cfg)
    label = eraser.partition(task, cfg)
    affected = len(np.unique(label[task.request.nodes]))
    assert stats["shards_retrained"] == affected < 4
    assert stats["shard_count_factor"] >= 2
    acc = float((predict(model, task.after).argmax(1) == g.y)[task.after.test].float().mean())
    assert acc > 0.25 + 0.2  # four classes: well above chance from 100-node shards
    again, stats2 = eraser.unlearn(task, cfg)  # the same request again: every checkpoint is there
    assert stats2["shards_retrained"] == 0
    assert torch.allclose(predict(again, task.after), predict(model, task.after))
    cfg_k = dataclasses.replace(cfg, partition="bekm")
    assert eraser.prepare(task, cfg_k)["prepare_shards"] == 4


TOY_GRAPH = '''
"""toy_graph: keeps the original model (a method that forgets nothing)."""
import copy
from dataclasses import dataclass

MODELS = ("gcn",)

@dataclass(frozen=True)
class Config:
    scale: float = 1.0

def unlearn(task, cfg):
    return copy.deepcopy(task.original), {"toy_request_size": float(task.request.size()) * cfg.scale}

def prepare(task, cfg):
    return {"toy_prepared": float(task.before.n)}

def diagnose(task, cfg, model):
    return {"toy_diagnosed": float(task.after.n)}
'''


@pytest.fixture
def toy_graph():
    with registered(GRAPH_METHODS, "toy_graph", TOY_GRAPH) as name:
        yield name


@pytest.mark.usefixtures("local_ray")
def test_toy_method_gets_every_hook_in_the_graph_kind(toy_graph, tmp_path):
    module = EXPERIMENTS.get("graph")
    cfg = build(module.Config, {
        "kind": "graph", "data": {"nodes": 200, "features": 8}, "train": {"epochs": 5}, "recipes": {"sgc": {"epochs": 5}},
        "experiment": {"models": ["gcn", "sgc"], "methods": ["graph_retrain", "toy_graph"], "noise_floor": False},
        "methods": {"toy_graph": {"scale": 2.0}}, "forget": [{"target": "nodes", "count": 3}]})
    report = module.run(cfg, tmp_path, progress=False)
    rows = [r for r in report["results"] if r["method"] == "toy_graph"]
    assert [r["model"] for r in rows] == ["gcn"]  # MODELS: skipped for sgc, with a note
    row = rows[0]
    assert row["toy_request_size"] == 2.0 * row["request_size"] and row["prepare_s"] >= 0
    assert row["toy_prepared"] == row["toy_diagnosed"] == 200.0
    assert "toy_graph skipped for sgc" in (tmp_path / "report.md").read_text()
