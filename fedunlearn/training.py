"""Seeded train / predict loops shared by every method; the device is chosen at run time."""

from __future__ import annotations

import contextlib
import copy
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fedunlearn.config import check_range
from fedunlearn.data.datasets import ArrayDataset


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. `retrain` reuses the original model's recipe exactly."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self):
        check_range("epochs", self.epochs, 0)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0)


_PROGRESS = True


def set_progress(enabled: bool) -> None:
    """`fedunlearn run -q`: no progress bar anywhere, whatever a method asks for."""
    global _PROGRESS
    _PROGRESS = enabled


def progress_bar(iterable, desc: str, progress: bool = True, **kwargs):
    """tqdm over `iterable`, hidden when the caller or `-q` says so."""
    return tqdm(iterable, desc=desc, disable=not (progress and _PROGRESS), leave=False, **kwargs)


def get_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


@contextlib.contextmanager
def frozen(*models: nn.Module):
    """Within the block no parameter of `models` asks for a gradient (inputs still get theirs);
    each parameter's own flag is restored after, even on an error."""
    params = [p for model in models for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def loader(data: ArrayDataset, batch_size: int, shuffle: bool, seed: int = 0) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def train(model: nn.Module, data: ArrayDataset, cfg: TrainConfig, device: torch.device, seed: int = 0,
          desc: str = "train", loss_fn: LossFn = cross_entropy, progress: bool = True) -> nn.Module:
    """Plain minibatch SGD over `data` for cfg.epochs; returns the same (trained) module."""
    model.to(device).train()
    seed_everything(seed)
    batches = loader(data, cfg.batch_size, shuffle=True, seed=seed)
    opt, sched = make_optimizer(model, cfg, cfg.epochs * len(batches))
    bar = progress_bar(range(cfg.epochs), desc, progress)
    for _ in bar:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def cycle(batches: Iterable):
    """Endless iteration over a DataLoader (reshuffled each pass), for pairing two loaders."""
    while True:
        yield from batches


@torch.no_grad()
def predict_probs(model: nn.Module, data: ArrayDataset | torch.Tensor, device: torch.device,
                  batch_size: int = 1024) -> torch.Tensor:
    """Softmax outputs on the CPU, in data order."""
    model.to(device).eval()
    x = data.x if isinstance(data, ArrayDataset) else data
    out = [F.softmax(model(x[i:i + batch_size].to(device)), dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: nn.Module, data: ArrayDataset, device: torch.device) -> float:
    if len(data) == 0:
        return float("nan")
    return (predict_probs(model, data, device).argmax(1) == data.y).float().mean().item()
