"""Graph-specific evaluation: the shared accuracies and distances, plus the deleted nodes'
neighbours' accuracy and an edge membership attack.

- neighbour_acc: accuracy, on the graph after the request, of the alive nodes within two hops
  (a two-layer GNN's receptive field) of what was deleted. Retraining changes them too.
- edge_mia_auc (edge requests): a link-stealing attack (He et al., USENIX Security 2021):
  score a node pair by the cosine similarity of the model's posteriors for its endpoints, and
  take the AUC of deleted edges against random pairs that were never connected. Retraining's
  own value is the target: high values are what the homophily of the graph alone explains.
- forget_acc: the deleted nodes (or the nodes whose features were deleted) as the model sees
  them in the graph before the request.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from fedunlearn.graph.data import Graph
from fedunlearn.graph.models import predict
from fedunlearn.graph.requests import GraphRequest
from fedunlearn.metrics.distance import js_divergence, l2_distance


def _acc(probs: torch.Tensor, y: torch.Tensor, nodes) -> float:
    nodes = torch.as_tensor(np.asarray(nodes), dtype=torch.long) if not isinstance(nodes, torch.Tensor) else nodes
    if nodes.dtype == torch.bool:
        nodes = nodes.nonzero().flatten()
    return float((probs[nodes].argmax(1) == y[nodes]).float().mean()) if len(nodes) else float("nan")


def non_edges(graph: Graph, count: int, seed: int) -> np.ndarray:
    """`count` random pairs of distinct alive nodes that were never an edge of `graph`."""
    rng = np.random.default_rng(seed)
    alive = np.flatnonzero(graph.alive.numpy())
    known = set(map(tuple, graph.edges.numpy().T.tolist()))
    pairs: list[tuple[int, int]] = []
    for _ in range(100 * count):  # a dense graph may have fewer non-edges than asked for
        if len(pairs) == count:
            break
        a, b = rng.choice(alive, 2, replace=False)
        a, b = min(a, b), max(a, b)
        if (a, b) not in known:
            pairs.append((a, b))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2).T


def edge_mia_auc(probs: torch.Tensor, pos: np.ndarray, neg: np.ndarray) -> float:
    if pos.shape[1] == 0 or neg.shape[1] == 0:
        return float("nan")
    score = lambda e: F.cosine_similarity(probs[e[0]], probs[e[1]], dim=1).numpy()  # noqa: E731
    labels = np.r_[np.ones(pos.shape[1]), np.zeros(neg.shape[1])]
    return float(roc_auc_score(labels, np.r_[score(pos), score(neg)]))


class GraphEvaluation:
    """Everything fixed per request (the node sets, the attack's non-edges), applied to each model."""

    def __init__(self, before: Graph, after: Graph, request: GraphRequest, seed: int):
        self.before, self.after, self.request = before, after, request
        self.neighbours = before.neighbours(request.touched(before), hops=2)
        self.neighbours = self.neighbours[after.alive.numpy()[self.neighbours]]
        if request.target == "edges":
            self.deleted_edges = before.edges[:, request.edges].numpy()
            self.negatives = non_edges(before, max(len(request.edges), 50), seed)

    def outputs(self, model: nn.Module) -> torch.Tensor:
        """Posteriors compared between models: alive nodes after the request, then the forget nodes before it."""
        after = predict(model, self.after)
        parts = [after[self.after.alive]]
        if self.request.target != "edges":
            parts.append(predict(model, self.before)[torch.as_tensor(self.request.nodes)])
        return torch.cat(parts)

    def evaluate(self, model: nn.Module) -> dict:
        after = predict(model, self.after)
        row = {"test_acc": _acc(after, self.after.y, self.after.test),
               "retain_acc": _acc(after, self.after.y, self.after.train),
               "neighbour_acc": _acc(after, self.after.y, self.neighbours)}
        if self.request.target == "edges":
            row["edge_mia_auc"] = edge_mia_auc(after, self.deleted_edges, self.negatives)
        else:
            before = predict(model, self.before)
            row["forget_acc"] = _acc(before, self.before.y, self.request.nodes)
        return row


def compare(row: dict, outputs: torch.Tensor, model: nn.Module, ref: dict, ref_out: torch.Tensor,
            ref_model: nn.Module) -> None:
    row["js_to_retrain"] = js_divergence(outputs, ref_out)
    row["l2_to_retrain"] = l2_distance(model, ref_model)
    keys = [k for k in ("test_acc", "retain_acc", "forget_acc", "neighbour_acc", "edge_mia_auc") if k in ref]
    row["avg_gap"] = 100.0 * float(np.nanmean([abs(row[k] - ref[k]) for k in keys]))
    if "wall_s" in row and "wall_s" in ref and row["wall_s"] > 0:
        row["speedup"] = ref["wall_s"] / row["wall_s"]
