"""SalUn (Fan et al., "SalUn: empowering machine unlearning via gradient-based weight saliency", ICLR 2024).

A saliency mask picks the weights that matter for forgetting: the magnitude of the gradient
of the forget-set loss with respect to each weight, keeping the top `fraction` of all
weights (one global threshold). The original is then fine-tuned with random labels on the
forget set together with the retain set (as in the random-label baseline), updating only
the masked weights; the other weights stay exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedunlearn.config import check_range
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.training import clone, loader, seed_everything
from fedunlearn.unlearn.base import Stats, UnlearnTask
from fedunlearn.unlearn.random_label import relabel


@dataclass(frozen=True)
class Config:
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 128
    fraction: float = 0.5  # share of weights updated (the paper's default sparsity of the mask)

    def __post_init__(self):
        check_range("epochs", self.epochs, 1)
        check_range("lr", self.lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("fraction", self.fraction, 0.0, 1.0)


def saliency_mask(model: torch.nn.Module, forget: ArrayDataset, fraction: float, device,
                  batch_size: int = 256) -> dict[str, torch.Tensor]:
    """{parameter name: 0/1 mask}: the top `fraction` of |d forget loss / d weight| over all weights."""
    model = model.to(device).eval()
    model.zero_grad(set_to_none=True)
    for x, y in loader(forget, batch_size, shuffle=False):
        F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").backward()
    grads = {n: p.grad.detach().abs() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    flat = torch.cat([g.flatten() for g in grads.values()])
    keep = int(round(fraction * flat.numel()))
    if keep == 0:
        return {n: torch.zeros_like(g) for n, g in grads.items()}
    threshold = flat.kthvalue(flat.numel() - keep + 1).values
    return {n: (g >= threshold).float() for n, g in grads.items()}


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    model = clone(task.original).to(task.device)
    mask = saliency_mask(model, task.forget, cfg.fraction, task.device)
    relabelled = ArrayDataset(task.forget.x, relabel(task.forget.y, task.num_classes, task.seed))
    data = ArrayDataset.concat(task.retain, relabelled)
    seed_everything(task.seed + 41)
    # Weight decay is applied by hand inside the mask: the optimizer's would move unmasked weights.
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=task.train_cfg.momentum)
    params = dict(model.named_parameters())
    model.train()
    for _ in range(cfg.epochs):
        for x, y in loader(data, cfg.batch_size, shuffle=True, seed=task.seed + 41):
            loss = F.cross_entropy(model(x.to(task.device)), y.to(task.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for name, m in mask.items():
                p = params[name]
                p.grad = (p.grad + task.train_cfg.weight_decay * p.detach()) * m
            opt.step()
    kept = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
    return model.eval(), Stats(epochs=cfg.epochs, masked_fraction=kept)
