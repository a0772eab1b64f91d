"""GNNDelete (Cheng, Dasoulas, He, Agarwal, Zitnik; ICLR 2023): learned deletion operators on a frozen GCN.

After each GCN layer a deletion operator, a linear map initialised to the identity, replaces
the representations of the nodes in the deleted edges' local neighbourhood (within the layer's
receptive field of an endpoint); every other node keeps the original model's representation.
Only the operators train, on two terms weighted by `lam`:
- deleted edge consistency: the endpoint representations of a deleted edge should look like
  those of a random node pair, so the edge leaves no trace;
- neighbourhood influence: the local nodes' representations should stay those of the
  original model on the graph without the deleted edges, so the rest of the graph is kept.
A node deletion is handled, as in the paper, as the deletion of all the node's edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.config import check_range
from fedunlearn.contract import MethodResult
from fedunlearn.errors import ConfigError
from fedunlearn.graph.models import adjacency
from fedunlearn.graph.task import GraphTask
from fedunlearn.training import clone, seed_everything

MODELS = ("gcn",)
TARGETS = ("nodes", "edges")   # a feature request deletes no edge


@dataclass(frozen=True)
class Config:
    lam: float = 0.5       # weight of deleted edge consistency against neighbourhood influence
    epochs: int = 100
    lr: float = 0.01

    def __post_init__(self):
        check_range("lam", self.lam, 0.0, 1.0)
        check_range("epochs", self.epochs, 1)
        check_range("lr", self.lr, 0.0)


class DeletedGCN(nn.Module):
    """A frozen two-layer GCN with a deletion operator after each layer on its local nodes."""

    adj_kind = "gcn"

    def __init__(self, gcn: nn.Module, local1: torch.Tensor, local2: torch.Tensor):
        super().__init__()
        self.gcn = gcn.requires_grad_(False)
        hidden, k = gcn.lin1.out_features, gcn.lin2.out_features
        self.del1, self.del2 = nn.Linear(hidden, hidden), nn.Linear(k, k)
        for layer in (self.del1, self.del2):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("local1", local1)
        self.register_buffer("local2", local2)

    def embed(self, x, adj):
        h = self.gcn.embed(x, adj)
        return torch.where(self.local1[:, None], self.del1(h), h)

    def forward(self, x, adj):
        out = adj @ self.gcn.lin2(self.embed(x, adj))
        return torch.where(self.local2[:, None], self.del2(out), out)


def unlearn(task: GraphTask, cfg: Config = Config()):
    before, after = task.before, task.after
    if task.request.target not in TARGETS:
        raise ConfigError("gnndelete deletes edges and nodes; a feature request has no deleted edges")
    gone = before.edges[:, task.request.edges] if task.request.target == "edges" else \
        before.edges[:, np.isin(before.edges.numpy(), task.request.nodes).any(0)]
    ends = np.unique(gone.numpy())
    mask = lambda hops: torch.as_tensor(np.isin(np.arange(before.n), np.r_[ends, before.neighbours(ends, hops)]))  # noqa: E731
    model = DeletedGCN(clone(task.original), mask(1), mask(2))  # layer l sees l hops
    seed_everything(task.seed)
    adj = adjacency(after, "gcn")
    with torch.no_grad():
        target = task.original(after.x, adj)                      # the original without the deleted edges
    alive = torch.as_tensor(np.flatnonzero(after.alive.numpy()))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    gen = torch.Generator().manual_seed(task.seed + 5)
    for _ in range(cfg.epochs):
        opt.zero_grad()
        out = model(after.x, adj)
        rand = alive[torch.randint(len(alive), gone.shape, generator=gen)]
        dec = F.mse_loss(torch.cat([out[gone[0]], out[gone[1]]], 1), torch.cat([out[rand[0]], out[rand[1]]], 1))
        local = model.local2
        ni = F.mse_loss(out[local], target[local])
        (cfg.lam * dec + (1 - cfg.lam) * ni).backward()
        opt.step()
    return MethodResult(model.eval(), {"deleted_edges": int(gone.shape[1]), "local_nodes": int(model.local2.sum())})
