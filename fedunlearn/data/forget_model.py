"""Forget sets that depend on a trained model: a subpopulation and the atypical samples.

Random forgetting from a model that generalises barely differs from retraining; these
differ. `subpopulation` clusters one class in the original model's penultimate-layer
features with k-means (seeded) and forgets one cluster: a coherent group the model may
have learned as such. `atypical` forgets the samples the original models are least
confident on (lowest mean true-class confidence across the ensemble, or the one original):
the ones a model can only fit by memorising them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.data.forget import ForgetConfig, select_forget
from fedunlearn.errors import DataError
from fedunlearn.training import predict_probs

MODEL_BASED = ("subpopulation", "atypical")


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, device, batch_size: int = 1024) -> np.ndarray:
    """The input of the model's last nn.Linear (its penultimate representation), per sample."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise DataError("subpopulation forgetting needs a model whose output layer is an nn.Linear")
    captured: list[torch.Tensor] = []
    hook = last[-1].register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach().cpu()))
    try:
        model.to(device).eval()
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        hook.remove()
    return torch.cat(captured).flatten(1).double().numpy()


def true_class_confidence(models: Sequence[nn.Module], data: ArrayDataset, device) -> np.ndarray:
    """Mean over models of each sample's softmax probability of its label."""
    confs = [predict_probs(m, data, device).gather(1, data.y.view(-1, 1)).squeeze(1).double().numpy() for m in models]
    return np.mean(confs, axis=0)


def subpopulation(train: ArrayDataset, model: nn.Module, cfg: ForgetConfig, seed: int, device) -> np.ndarray:
    from sklearn.cluster import KMeans

    labels = train.y.numpy()
    present = np.unique(labels)
    rng = np.random.default_rng([seed, 2])
    target = cfg.classes[0] if cfg.classes else int(rng.choice(present))
    members = np.flatnonzero(labels == target)
    if len(members) < cfg.clusters:
        raise DataError(f"forget.classes[0] = {target} has {len(members)} training samples, fewer than "
                        f"forget.clusters = {cfg.clusters}")
    if cfg.size >= len(members):
        raise DataError(f"forget.size = {cfg.size} would forget all {len(members)} training samples of class {target} "
                        "(that is class forgetting); choose a smaller size")
    feats = penultimate_features(model, train.x[members], device)
    kmeans = KMeans(n_clusters=cfg.clusters, random_state=seed, n_init=10).fit(feats)
    chosen = cfg.cluster if cfg.cluster >= 0 else int(rng.integers(cfg.clusters))
    if cfg.size:
        # k-means cluster sizes are whatever the data gives (a handful of samples, sometimes); a
        # fixed number nearest the cluster's centre is the same kind of group at a chosen size.
        dist = np.linalg.norm(feats - kmeans.cluster_centers_[chosen], axis=1)
        return np.sort(members[np.argsort(dist, kind="stable")[:cfg.size]])
    return np.sort(members[kmeans.labels_ == chosen])


def atypical(train: ArrayDataset, models: Sequence[nn.Module], cfg: ForgetConfig, device) -> np.ndarray:
    n = len(train)
    count = int(round(cfg.fraction * n))
    if count == 0 or count >= n:
        raise DataError(f"forget.fraction={cfg.fraction} selects {count} of {n} samples; choose a value that "
                        "leaves both sets non-empty")
    conf = true_class_confidence(models, train, device)
    return np.sort(np.argsort(conf, kind="stable")[:count])


def select_forget_for(train: ArrayDataset, cfg: ForgetConfig, seed: int,
                      originals: Callable[[], Sequence[nn.Module]], device) -> np.ndarray:
    """Any forget kind; `originals()` (called only for the model-based kinds) gives the trained
    original model(s): subpopulation clusters in the first one's features, atypical averages all."""
    if cfg.kind not in MODEL_BASED:
        return select_forget(train.y.numpy(), cfg, seed)
    models = list(originals())
    if cfg.kind == "subpopulation":
        return subpopulation(train, models[0], cfg, seed, device)
    return atypical(train, models, cfg, device)
