"""Graphs for node classification: a seeded contextual stochastic block model and Planetoid files.

A `Graph` holds node features, an undirected edge list (each edge once, i < j), labels and
train / val / test masks. Node ids never change: deleting a node removes its edges, zeroes its
features and takes it out of every mask (`alive` turns false), so models, masks and metrics of
the graph before and after a request line up index by index.

`csbm` is the contextual stochastic block model (Deshpande et al., NeurIPS 2018): features
drawn around a per-class mean, edges with probability p_in inside a class and p_out across.
`karate` is Zachary's karate club as networkx (a dependency of torch) ships it: 34 members,
labelled by the faction they joined, one-hot node features, the csbm split fractions.
`load_planetoid` reads Cora / CiteSeer / PubMed in the original Planetoid format (Yang et al.,
ICML 2016): ind.<name>.{x,tx,allx,y,ty,ally,graph} pickles and ind.<name>.test.index, with the
standard split (train = the labelled x rows, val = the next 500 nodes, test = test.index).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedunlearn.config import check_range
from fedunlearn.errors import DataError, unknown_choice

PLANETOID = ("cora", "citeseer", "pubmed")
BUILT_IN = ("csbm", "karate")


@dataclass(frozen=True)
class GraphDataConfig:
    name: str = "csbm"        # csbm, karate (no files needed) or a Planetoid name read from data_dir
    data_dir: str = ""        # folder with the ind.<name>.* files
    nodes: int = 2000         # csbm: number of nodes
    classes: int = 4
    features: int = 32
    degree: float = 10.0      # csbm: expected degree
    homophily: float = 0.6    # csbm: share of a node's expected edges that stay inside its class
    signal: float = 0.4       # csbm: distance of the class means in feature space (noise std is 1)
    train_frac: float = 0.5   # csbm split
    val_frac: float = 0.1

    def __post_init__(self):
        if self.name not in (*BUILT_IN, *PLANETOID):
            raise unknown_choice("graph data set", self.name, (*BUILT_IN, *PLANETOID))
        check_range("data.nodes", self.nodes, 10)
        check_range("data.classes", self.classes, 2)
        check_range("data.features", self.features, 1)
        check_range("data.degree", self.degree, 0.0)
        check_range("data.homophily", self.homophily, 0.0, 1.0)
        check_range("data.train_frac", self.train_frac, 0.0, 1.0)
        check_range("data.val_frac", self.val_frac, 0.0, 1.0 - self.train_frac)


@dataclass
class Graph:
    x: torch.Tensor           # (n, d) float32
    edges: torch.Tensor       # (2, m) long, undirected, each edge once with row 0 < row 1
    y: torch.Tensor           # (n,) long
    train: torch.Tensor       # (n,) bool masks
    val: torch.Tensor
    test: torch.Tensor
    alive: torch.Tensor       # (n,) bool: false for deleted nodes
    num_classes: int
    name: str = "graph"

    @property
    def n(self) -> int:
        return len(self.y)

    def directed(self) -> torch.Tensor:
        """Both directions of every edge: the message-passing edge list."""
        return torch.cat([self.edges, self.edges.flip(0)], dim=1)

    def neighbours(self, nodes: np.ndarray, hops: int = 1) -> np.ndarray:
        """Alive nodes within `hops` of `nodes`, the nodes themselves excluded."""
        src, dst = self.directed().numpy()
        seen = np.zeros(self.n, dtype=bool)
        seen[nodes] = True
        frontier = seen.copy()
        for _ in range(hops):
            nxt = np.zeros(self.n, dtype=bool)
            nxt[dst[frontier[src]]] = True
            frontier = nxt & ~seen
            seen |= nxt
        seen[nodes] = False
        return np.flatnonzero(seen & self.alive.numpy())

    def without_nodes(self, nodes: np.ndarray) -> "Graph":
        gone = torch.zeros(self.n, dtype=torch.bool)
        gone[torch.as_tensor(nodes, dtype=torch.long)] = True
        keep = ~(gone[self.edges[0]] | gone[self.edges[1]])
        x = self.x.clone()
        x[gone] = 0.0
        return replace(self, x=x, edges=self.edges[:, keep], train=self.train & ~gone, val=self.val & ~gone,
                       test=self.test & ~gone, alive=self.alive & ~gone)

    def without_edges(self, edge_ids: np.ndarray) -> "Graph":
        keep = torch.ones(self.edges.shape[1], dtype=torch.bool)
        keep[torch.as_tensor(edge_ids, dtype=torch.long)] = False
        return replace(self, edges=self.edges[:, keep])

    def without_features(self, nodes: np.ndarray) -> "Graph":
        x = self.x.clone()
        x[torch.as_tensor(nodes, dtype=torch.long)] = 0.0
        return replace(self, x=x)

    def induced(self, nodes: np.ndarray) -> "Graph":
        """The subgraph on `nodes`, relabelled 0..k-1 (a GraphEraser shard)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        index = torch.full((self.n,), -1, dtype=torch.long)
        index[torch.as_tensor(nodes)] = torch.arange(len(nodes))
        e = index[self.edges]
        e = e[:, (e >= 0).all(0)]
        t = torch.as_tensor(nodes)
        return Graph(self.x[t], e, self.y[t], self.train[t], self.val[t], self.test[t], self.alive[t],
                     self.num_classes, f"{self.name}[{len(nodes)}]")


def canonical_edges(src: np.ndarray, dst: np.ndarray) -> torch.Tensor:
    """Undirected, deduplicated, no self loops, i < j."""
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    keep = a != b
    pairs = np.unique(np.stack([a[keep], b[keep]], axis=1), axis=0)
    return torch.as_tensor(pairs.T.copy(), dtype=torch.long).reshape(2, -1)


def random_masks(n: int, train_frac: float, val_frac: float, seed: int):
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(train_frac * n), int(val_frac * n)
    masks = []
    for part in (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]):
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.as_tensor(part, dtype=torch.long)] = True
        masks.append(m)
    return masks


def csbm(cfg: GraphDataConfig, seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    n, k = cfg.nodes, cfg.classes
    y = rng.integers(0, k, n)
    means = rng.normal(size=(k, cfg.features))
    means *= cfg.signal / np.sqrt(2 * cfg.features)  # class means sit about `signal` apart
    x = means[y] + rng.normal(size=(n, cfg.features)) / np.sqrt(cfg.features)
    # Expected degree split into in-class and cross-class edges; sampled as pairs, not an n x n matrix.
    m = int(cfg.degree * n / 2)
    m_in = int(cfg.homophily * m)
    members = [np.flatnonzero(y == c) for c in range(k)]
    cls = np.sort(rng.choice(k, m_in, p=np.array([len(v) for v in members]) / n))
    counts = np.bincount(cls, minlength=k)
    src_in = np.concatenate([rng.choice(members[c], counts[c]) for c in range(k)])
    dst_in = np.concatenate([rng.choice(members[c], counts[c]) for c in range(k)])
    src_out, dst_out = rng.integers(0, n, (2, m - m_in))
    cross = y[src_out] != y[dst_out]
    edges = canonical_edges(np.concatenate([src_in, src_out[cross]]), np.concatenate([dst_in, dst_out[cross]]))
    train, val, test = random_masks(n, cfg.train_frac, cfg.val_frac, seed)
    return Graph(torch.as_tensor(x, dtype=torch.float32), edges, torch.as_tensor(y, dtype=torch.long), train, val,
                 test, torch.ones(n, dtype=torch.bool), k, "csbm")


def _read(root: Path, name: str, part: str):
    path = root / f"ind.{name}.{part}"
    if not path.is_file():
        raise DataError(f"Planetoid file '{path}' not found; data.data_dir must hold ind.{name}.x, tx, allx, y, ty, "
                        "ally, graph and test.index (the files of github.com/kimiyoung/planetoid)")
    if part == "test.index":
        return np.array([int(line) for line in path.read_text().split()], dtype=np.int64)
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")  # the files were written by Python 2


def load_planetoid(cfg: GraphDataConfig) -> Graph:
    """The Planetoid split as Kipf and Welling read it (their utils.load_data), with CiteSeer's
    isolated test nodes."""
    import scipy.sparse as sp

    root = Path(cfg.data_dir) if cfg.data_dir else Path.home() / ".cache" / "fedunlearn" / "planetoid"
    name = cfg.name
    x, y, tx, ty, allx, ally, graph = (_read(root, name, p) for p in ("x", "y", "tx", "ty", "allx", "ally", "graph"))
    test_index = _read(root, name, "test.index")
    test_range = np.sort(test_index)
    if name == "citeseer":  # some test nodes are isolated and missing from tx: pad with zeros
        full = np.arange(test_range.min(), test_range.max() + 1)
        tx_ext = sp.lil_matrix((len(full), tx.shape[1]))
        tx_ext[test_range - test_range.min(), :] = tx
        ty_ext = np.zeros((len(full), ty.shape[1]))
        ty_ext[test_range - test_range.min(), :] = ty
        tx, ty = tx_ext, ty_ext
    feats = sp.vstack([sp.csr_matrix(allx), sp.csr_matrix(tx)]).tolil()
    feats[test_index, :] = feats[test_range, :]
    labels = np.vstack([np.asarray(ally), np.asarray(ty)])
    labels[test_index, :] = labels[test_range, :]
    n = feats.shape[0]
    src = [int(i) for i, nbrs in graph.items() for _ in nbrs]
    dst = [int(j) for nbrs in graph.values() for j in nbrs]
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    ok = (src < n) & (dst < n)
    edges = canonical_edges(src[ok], dst[ok])
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    n_train = len(y)
    masks[0][:n_train] = True
    masks[1][n_train:min(n, n_train + 500)] = True
    masks[2][torch.as_tensor(test_range[test_range < n])] = True
    masks[1] &= ~masks[2]
    x_t = torch.as_tensor(np.asarray(feats.todense()), dtype=torch.float32)
    row_sum = x_t.sum(1, keepdim=True).clamp_min(1e-12)  # Kipf's row normalisation of word counts
    return Graph(x_t / row_sum, edges, torch.as_tensor(labels.argmax(1), dtype=torch.long), *masks,
                 torch.ones(n, dtype=torch.bool), labels.shape[1], name)


def karate(cfg: GraphDataConfig, seed: int) -> Graph:
    import networkx as nx

    g = nx.karate_club_graph()
    n = g.number_of_nodes()
    src, dst = np.array(list(g.edges())).T
    y = torch.as_tensor([0 if g.nodes[v]["club"] == "Mr. Hi" else 1 for v in range(n)], dtype=torch.long)
    train, val, test = random_masks(n, cfg.train_frac, cfg.val_frac, seed)
    return Graph(torch.eye(n), canonical_edges(src, dst), y, train, val, test, torch.ones(n, dtype=torch.bool), 2,
                 "karate")


def load_graph(cfg: GraphDataConfig, seed: int) -> Graph:
    if cfg.name == "csbm":
        return csbm(cfg, seed)
    return karate(cfg, seed) if cfg.name == "karate" else load_planetoid(cfg)
