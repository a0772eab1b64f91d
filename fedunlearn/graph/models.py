"""Node-classification models on a sparse adjacency, and their full-batch training loop.

- GCN (Kipf and Welling, ICLR 2017): two layers of D^-1/2 (A + I) D^-1/2 X W.
- SGC (Wu et al., ICML 2019): K propagations of the same matrix, then one linear layer, so the
  model is a logistic regression on fixed features (what certified graph unlearning needs).
- SAGE (Hamilton et al., NeurIPS 2017), mean aggregator: h' = W_self h + W_neigh mean_{N(v)} h.

A model's forward takes (x, adj) where adj = adjacency(graph, model.adj_kind), built once per
graph; `embed` gives the hidden node representations (GraphEraser's embedding partition).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.config import check_range
from fedunlearn.errors import unknown_choice
from fedunlearn.graph.data import Graph
from fedunlearn.training import seed_everything

MODELS = ("gcn", "sgc", "sage")


@dataclass(frozen=True)
class GraphModelConfig:
    name: str = "gcn"
    hidden: int = 32
    hops: int = 2          # sgc: propagation steps K
    dropout: float = 0.0

    def __post_init__(self):
        if self.name not in MODELS:
            raise unknown_choice("graph model", self.name, MODELS)
        check_range("model.hidden", self.hidden, 1)
        check_range("model.hops", self.hops, 1)
        check_range("model.dropout", self.dropout, 0.0, 1.0)


@dataclass(frozen=True)
class GraphTrainConfig:
    """Full-batch Adam on the training nodes' mean cross-entropy plus weight decay (an L2 term)."""

    epochs: int = 200
    lr: float = 0.01
    weight_decay: float = 5e-4

    def __post_init__(self):
        check_range("train.epochs", self.epochs, 0)
        check_range("train.lr", self.lr, 0.0)
        check_range("train.weight_decay", self.weight_decay, 0.0)


def adjacency(graph: Graph, kind: str) -> torch.Tensor:
    """Sparse (n, n): 'gcn' = D^-1/2 (A + I) D^-1/2, 'mean' = D^-1 A (rows of isolated nodes stay zero)."""
    n = graph.n
    src, dst = graph.directed()
    if kind == "gcn":
        loops = torch.arange(n)
        src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
        deg = torch.bincount(dst, minlength=n).float()
        val = deg[src].rsqrt() * deg[dst].rsqrt()
    else:
        deg = torch.bincount(dst, minlength=n).float().clamp_min(1)
        val = 1.0 / deg[dst]
    # Indices come from our own edge list, so the invariant checks would only cost time.
    return torch.sparse_coo_tensor(torch.stack([dst, src]), val, (n, n), check_invariants=False).coalesce()


class GCN(nn.Module):
    adj_kind = "gcn"

    def __init__(self, d: int, hidden: int, k: int, dropout: float = 0.0):
        super().__init__()
        self.lin1, self.lin2, self.dropout = nn.Linear(d, hidden), nn.Linear(hidden, k), dropout

    def embed(self, x, adj):
        return F.relu(adj @ self.lin1(x))

    def forward(self, x, adj):
        h = F.dropout(self.embed(x, adj), self.dropout, self.training)
        return adj @ self.lin2(h)


class SGC(nn.Module):
    adj_kind = "gcn"

    def __init__(self, d: int, k: int, hops: int = 2):
        super().__init__()
        self.lin, self.hops = nn.Linear(d, k), hops

    def embed(self, x, adj):
        for _ in range(self.hops):
            x = adj @ x
        return x

    def forward(self, x, adj):
        return self.lin(self.embed(x, adj))


class SAGE(nn.Module):
    adj_kind = "mean"

    def __init__(self, d: int, hidden: int, k: int, dropout: float = 0.0):
        super().__init__()
        self.self1, self.neigh1 = nn.Linear(d, hidden), nn.Linear(d, hidden, bias=False)
        self.self2, self.neigh2 = nn.Linear(hidden, k), nn.Linear(hidden, k, bias=False)
        self.dropout = dropout

    def embed(self, x, adj):
        return F.relu(self.self1(x) + self.neigh1(adj @ x))

    def forward(self, x, adj):
        h = F.dropout(self.embed(x, adj), self.dropout, self.training)
        return self.self2(h) + self.neigh2(adj @ h)


def build_graph_model(cfg: GraphModelConfig, d: int, k: int, seed: int) -> nn.Module:
    seed_everything(seed)
    if cfg.name == "gcn":
        return GCN(d, cfg.hidden, k, cfg.dropout)
    if cfg.name == "sgc":
        return SGC(d, k, cfg.hops)
    return SAGE(d, cfg.hidden, k, cfg.dropout)


def train_loss(model: nn.Module, graph: Graph, adj: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the (alive) training nodes: the objective without its L2 term."""
    mask = graph.train if mask is None else mask
    return F.cross_entropy(model(graph.x, adj)[mask], graph.y[mask])


def train_graph(model: nn.Module, graph: Graph, cfg: GraphTrainConfig, seed: int = 0,
                adj: torch.Tensor | None = None) -> nn.Module:
    """Full-batch Adam for cfg.epochs on the graph's training nodes; returns the trained module."""
    seed_everything(seed)
    adj = adjacency(graph, model.adj_kind) if adj is None else adj
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    if int(graph.train.sum()) == 0:
        return model.eval()
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        train_loss(model, graph, adj).backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, graph: Graph) -> torch.Tensor:
    """Class probabilities of every node."""
    model.eval()
    return F.softmax(model(graph.x, adjacency(graph, model.adj_kind)), dim=1)
