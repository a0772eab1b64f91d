"""Forget terms for source-free consolidation that aim at what is unique to the forgotten data.

A forget term over all of a departing client's data destroys the model (the paper's KL to
uniform, or negative cross-entropy): an IID client's data looks like everyone
else's, and the target is a model retrained without it, which still classifies such data
well. What must go is what only that data taught: backdoors and memorised samples. So:

1. `flag_unknown` (run where the data is): keep the samples whose label a model that should
   not know the data (the global model minus the client's stored updates, or that model
   after a source-free repair) finds very unlikely. Backdoored samples are the typical hit:
   their label is the target, the model says the true class. Ordinary samples are not: a
   model trained without them still classifies them.
2. `local_fisher` (same place): the diagonal Fisher information of the reference model's
   predictions on the flagged samples. It is a statistic of the model, the size of the
   model: no sample leaves.
3. `fisher_penalty` (on the server): 0.5 * sum_i F_i (theta_i - theta_ref_i)^2, the
   quadratic approximation of the mean KL(p_ref || p_student) over the flagged samples. It
   holds the student to the reference's predictions there (not to uniform ones), so that
   distilling from a teacher that still carries the backdoor does not re-teach it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.training import predict_probs


def flag_unknown(reference: nn.Module, data: ArrayDataset, device, max_confidence: float = 0.1) -> np.ndarray:
    """Positions in `data` to which the reference gives its label a probability below
    `max_confidence`: what the federation without this data does not know."""
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    probs = predict_probs(reference, data, device)
    keep = probs[torch.arange(len(data)), data.y] < max_confidence
    return torch.nonzero(keep).flatten().numpy()


def local_fisher(reference: nn.Module, data: ArrayDataset, device, max_samples: int = 256,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the reference's predictive distribution on (at most max_samples of)
    `data`: mean over samples of E_{c ~ p_ref(.|x)} (d log p(c|x) / d theta)^2, computed
    exactly over the classes. Keyed by parameter name, on the CPU; zeros when data is empty."""
    params = {name: p for name, p in reference.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p, device="cpu") for name, p in params.items()}
    if len(data) == 0:
        return fisher
    if len(data) > max_samples:
        data = data.subset(np.sort(np.random.default_rng(seed).choice(len(data), max_samples, replace=False)))
    reference.to(device).eval()
    for x, _ in zip(data.x, data.y):
        log_p = F.log_softmax(reference(x[None].to(device)), dim=1)[0]
        probs = log_p.exp().detach()
        for c in range(len(log_p)):
            if probs[c] < 1e-4:  # negligible weight, skip the backward pass
                continue
            grads = torch.autograd.grad(log_p[c], list(params.values()), retain_graph=True)
            for name, g in zip(params, grads):
                fisher[name] += probs[c].item() * g.detach().cpu() ** 2
    return {name: f / len(data) for name, f in fisher.items()}


def fisher_penalty(reference: nn.Module, fisher: dict[str, torch.Tensor]):
    """A forget term for `consolidate`: 0.5 * sum F (theta - theta_ref)^2 over named parameters."""
    anchors = {name: p.detach().clone() for name, p in reference.named_parameters()}
    unknown = set(fisher) - set(anchors)
    if unknown:
        raise ValueError(f"Fisher statistics name parameters the model lacks: {sorted(unknown)[:3]}")

    def term(student: nn.Module) -> torch.Tensor:
        total = 0.0
        for name, p in student.named_parameters():
            if name in fisher:
                f = fisher[name].to(p.device)
                total = total + 0.5 * (f * (p - anchors[name].to(p.device)) ** 2).sum()
        return total if isinstance(total, torch.Tensor) else torch.zeros(())

    return term
