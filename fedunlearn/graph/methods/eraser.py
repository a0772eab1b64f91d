"""GraphEraser (Chen, Zhang, Wang, Backes, Humbert, Zhang; CCS 2022): SISA for graphs.

The training nodes are split once into balanced shards that keep graph structure (BLPA or
BEKM, fedunlearn.graph.partition); each shard's model trains on its shard's induced subgraph,
as parallel Ray tasks (fedunlearn.cluster.fan_out); a node's prediction aggregates the shard
models' posteriors on the whole graph with weights learned on retained training nodes (the
paper's learning-based aggregation, LBAggr). As in SISA (fedunlearn.unlearn.sisa) a shard's
checkpoint is named by a hash of its subgraph (node ids, labels, features, edges) and the
recipe, so a request retrains only the shards whose subgraph it changed; the aggregation
weights are learned again (a few hundred nodes, milliseconds).

Stats: the shards retrained, the speedup the shard sizes predict (nodes processed: graph
retraining on one worker against the slowest chain of shard retrainings on W workers) and the
factor the shard count alone predicts (shards / ceil(affected / W)).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn import checkpoint
from fedunlearn.cluster import current_resources, fan_out, ray_session
from fedunlearn.config import check_range, config_hash
from fedunlearn.contract import MethodResult
from fedunlearn.errors import ConfigError
from fedunlearn.graph.data import Graph
from fedunlearn.graph.models import adjacency, train_graph
from fedunlearn.graph.partition import bekm, blpa, cut_share
from fedunlearn.graph.task import GraphTask
from fedunlearn.unlearn.sisa_shards import makespan

MODELS = None


@dataclass(frozen=True)
class Config:
    shards: int = 8
    partition: Literal["blpa", "bekm"] = "blpa"
    aggregate: Literal["learned", "mean"] = "learned"
    agg_nodes: int = 500      # retained training nodes the aggregation weights are learned on
    agg_steps: int = 100

    def __post_init__(self):
        check_range("shards", self.shards, 1)
        check_range("agg_nodes", self.agg_nodes, 1)
        check_range("agg_steps", self.agg_steps, 1)


class ShardAggregate(nn.Module):
    """Weighted mean of the shard models' posteriors; forward returns log-probabilities."""

    def __init__(self, members: list[nn.Module], weights: torch.Tensor):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", weights)
        self.adj_kind = members[0].adj_kind

    def forward(self, x, adj):
        probs = torch.stack([F.softmax(m(x, adj), dim=1) for m in self.members])
        return (self.weights[:, None, None] * probs).sum(0).clamp_min(1e-12).log()


def _workdir(task: GraphTask) -> Path:
    if not task.workdir:
        raise ConfigError("graph_eraser needs GraphTask.workdir, a folder for its shard checkpoints")
    return Path(task.workdir) / "graph_eraser"


def partition(task: GraphTask, cfg: Config) -> np.ndarray:
    """Shard of every node of the original graph (-1 for nodes that are not training nodes); computed once."""
    g = task.before
    graph_id = hashlib.sha256(g.edges.numpy().tobytes() + g.train.numpy().tobytes()).hexdigest()[:16]
    path = _workdir(task) / f"partition-{config_hash([cfg.shards, cfg.partition, task.seed, graph_id])}.npy"
    if path.is_file():
        return np.load(path)
    nodes = np.flatnonzero(g.train.numpy())
    if cfg.partition == "blpa":
        label = blpa(nodes, g.edges.numpy(), cfg.shards, task.seed)
    else:
        with torch.no_grad():
            emb = task.original.embed(g.x, adjacency(g, task.original.adj_kind))[torch.as_tensor(nodes)].numpy()
        label = bekm(emb, cfg.shards, task.seed)
    out = np.full(g.n, -1, dtype=np.int64)
    out[nodes] = label
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def _key(sub: Graph, nodes: np.ndarray, base: str, shard: int) -> str:
    h = hashlib.sha256(f"{base}/{shard}".encode())
    for part in (nodes.astype(np.int64), sub.y.numpy(), sub.x.numpy(), sub.edges.numpy()):
        h.update(np.ascontiguousarray(part).tobytes())
    return f"shard{shard:03d}-{h.hexdigest()[:20]}"


def _train_shard(sub: Graph, key: str, make_model, recipe, seed: int, ckpt_dir: str) -> int:
    model = train_graph(make_model(), sub, recipe, seed=seed)
    checkpoint.save(Path(ckpt_dir) / key, {k: v.detach().clone() for k, v in model.state_dict().items()})
    return int(sub.train.sum())


def fit(task: GraphTask, graph: Graph, cfg: Config) -> MethodResult:
    """Shard models for exactly the current `graph`, training only shards without a valid checkpoint."""
    ckpt = _workdir(task)
    label = partition(task, cfg)
    base = config_hash([task.train_cfg, cfg.shards, cfg.partition, task.seed, task.model_name])
    live = graph.train.numpy() & graph.alive.numpy()
    subs, keys = [], []
    for s in range(cfg.shards):
        nodes = np.flatnonzero((label == s) & live)
        sub = graph.induced(nodes)
        subs.append((nodes, sub))
        keys.append(_key(sub, nodes, base, s) if len(nodes) else "")
    jobs = [s for s in range(cfg.shards) if keys[s] and checkpoint.load_or_none(ckpt / keys[s]) is None]
    with ray_session(task.cluster):
        res = current_resources(task.cluster)
        calls = [(subs[s][1], keys[s], task.make_model, task.train_cfg, task.seed + 101 * s, str(ckpt)) for s in jobs]
        fan_out(_train_shard, calls, task.cluster, res)
    members = []
    for s in range(cfg.shards):
        if keys[s]:
            model = task.make_model()
            model.load_state_dict(checkpoint.load(ckpt / keys[s])[0])
            members.append(model.eval())
    weights = _aggregation_weights(members, graph, cfg, task.seed)
    epochs = task.train_cfg.epochs
    full = [epochs * len(subs[s][0]) for s in range(cfg.shards)]
    done = [epochs * len(subs[s][0]) for s in jobs]
    critical = makespan(done, res.slots) if jobs else 0.0
    retrain_work = epochs * int(graph.alive.sum())
    affected_rounds = math.ceil(len(jobs) / res.slots) if jobs else 0
    stats = {"shards_retrained": len(jobs), "workers": res.slots,
             "predicted_speedup": retrain_work / critical if critical else float("inf"),
             "shard_count_factor": cfg.shards / affected_rounds if affected_rounds else float("inf"),
             "full_shards_critical_over_retrain": makespan(full, res.slots) / retrain_work,
             "cut_edge_share": cut_share(np.flatnonzero(label >= 0), label[label >= 0], task.before.edges.numpy()),
             "max_weight": float(weights.max())}
    return MethodResult(ShardAggregate(members, weights).eval(), stats)


def _aggregation_weights(members: list[nn.Module], graph: Graph, cfg: Config, seed: int) -> torch.Tensor:
    if cfg.aggregate == "mean" or len(members) == 1:
        return torch.full((len(members),), 1.0 / len(members))
    nodes = np.flatnonzero(graph.train.numpy())
    nodes = np.random.default_rng(seed + 3).choice(nodes, min(cfg.agg_nodes, len(nodes)), replace=False)
    adj = adjacency(graph, members[0].adj_kind)
    idx = torch.as_tensor(nodes)
    with torch.no_grad():
        probs = torch.stack([F.softmax(m(graph.x, adj)[idx], dim=1) for m in members])
    logits = torch.zeros(len(members), requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(cfg.agg_steps):
        opt.zero_grad()
        mix = (F.softmax(logits, 0)[:, None, None] * probs).sum(0)
        F.nll_loss(mix.clamp_min(1e-12).log(), graph.y[idx]).backward()
        opt.step()
    return F.softmax(logits.detach(), 0)


def prepare(task: GraphTask, cfg: Config = Config()) -> dict:
    """Partition and train every shard on the graph before the request (training time, not timed)."""
    _, stats = fit(task, task.before, cfg)
    return {"prepare_shards": stats["shards_retrained"], "cut_edge_share": stats["cut_edge_share"]}


def unlearn(task: GraphTask, cfg: Config = Config()):
    """Retrain the shards whose subgraph the request changed; learn the aggregation weights again."""
    return fit(task, task.after, cfg)
