"""Graph deletion requests: nodes (with their edges), edges, or node features; chosen at random,
by class, or as a neighbourhood (a seed node and the nodes around it, as a user and their contacts).

Only training nodes are ever named by a node or feature request (the model saw their labels);
an edge request names existing edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedunlearn.config import check_range
from fedunlearn.errors import DataError
from fedunlearn.graph.data import Graph


@dataclass(frozen=True)
class GraphForgetConfig:
    name: str = ""                  # a label for the report (default: target-kind)
    target: Literal["nodes", "edges", "features"] = "nodes"
    kind: Literal["random", "class", "neighbourhood"] = "random"
    count: int = 10                 # nodes or edges to delete (class: at most this many of the class; 0 = all)
    classes: tuple[int, ...] = (0,)  # kind = "class"
    hops: int = 1                   # kind = "neighbourhood": radius around the seed node

    def __post_init__(self):
        check_range("forget.count", self.count, 0)
        check_range("forget.hops", self.hops, 1)


@dataclass
class GraphRequest:
    target: str
    nodes: np.ndarray        # deleted nodes, or the nodes whose features go (empty for an edge request)
    edges: np.ndarray        # ids into the graph's edge list (empty for a node / feature request)

    def apply(self, graph: Graph) -> Graph:
        if self.target == "nodes":
            return graph.without_nodes(self.nodes)
        if self.target == "edges":
            return graph.without_edges(self.edges)
        return graph.without_features(self.nodes)

    def touched(self, graph: Graph) -> np.ndarray:
        """The nodes a request names directly: deleted nodes or the deleted edges' endpoints."""
        if self.target == "edges":
            return np.unique(graph.edges[:, self.edges].numpy())
        return self.nodes

    def size(self) -> int:
        return len(self.edges) if self.target == "edges" else len(self.nodes)


def _take(pool: np.ndarray, count: int, rng, what: str) -> np.ndarray:
    if len(pool) == 0:
        raise DataError(f"the forget request selects no {what}; choose another class, kind or seed")
    if count and count < len(pool):
        pool = rng.choice(pool, count, replace=False)
    return np.sort(pool)


def select_request(graph: Graph, cfg: GraphForgetConfig, seed: int) -> GraphRequest:
    rng = np.random.default_rng(seed + 17)
    train_nodes = np.flatnonzero(graph.train.numpy())
    y = graph.y.numpy()
    bad = [c for c in cfg.classes if not 0 <= c < graph.num_classes]
    if cfg.kind == "class" and bad:
        raise DataError(f"forget.classes {bad} out of range: the graph has {graph.num_classes} classes")
    if cfg.target in ("nodes", "features"):
        if cfg.kind == "random":
            pool = train_nodes
        elif cfg.kind == "class":
            pool = train_nodes[np.isin(y[train_nodes], cfg.classes)]
        else:  # a seed training node with degree > 0 and the training nodes around it
            src = graph.directed()[0].numpy()
            degree = np.bincount(src, minlength=graph.n)
            seeds = train_nodes[degree[train_nodes] > 0]
            if len(seeds) == 0:
                raise DataError("no training node has an edge: a neighbourhood request needs one")
            centre = rng.choice(seeds)
            around = graph.neighbours(np.array([centre]), cfg.hops)
            pool = np.concatenate([[centre], around[graph.train.numpy()[around]]])
            pool = np.concatenate([[centre], rng.permutation(pool[1:])[:max(0, cfg.count - 1)]]) if cfg.count else pool
        return GraphRequest(cfg.target, _take(pool, cfg.count, rng, "nodes"), np.empty(0, dtype=np.int64))
    edges = graph.edges.numpy()
    ids = np.arange(edges.shape[1])
    if cfg.kind == "class":
        ids = ids[np.isin(y[edges[0]], cfg.classes) & np.isin(y[edges[1]], cfg.classes)]
    elif cfg.kind == "neighbourhood":
        centre = rng.choice(np.unique(edges))
        near = np.concatenate([[centre], graph.neighbours(np.array([centre]), cfg.hops)])
        ids = ids[np.isin(edges[0], near) | np.isin(edges[1], near)]
    return GraphRequest("edges", np.empty(0, dtype=np.int64), _take(ids, cfg.count, rng, "edges"))
