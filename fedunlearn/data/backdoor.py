"""Backdoor triggers that mark a client's data, so forgetting it can be verified.

A trigger is a small bright square in the bottom-right corner; a poisoned sample carries the
trigger and the target label. Attack success rate (ASR) is measured on triggered test inputs
whose true label is not the target: the share classified as the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedunlearn.config import check_range


@dataclass(frozen=True)
class BackdoorConfig:
    fraction: float = 0.0   # share of the departing client's samples that carry the trigger
    target: int = 0         # label the trigger maps to
    size: int = 3           # side of the square patch, in pixels
    value: float = 1.0      # patch intensity (inputs are scaled to [0, 1])

    def __post_init__(self):
        check_range("backdoor.fraction", self.fraction, 0.0, 1.0)
        check_range("backdoor.size", self.size, 1)


def add_trigger(x: torch.Tensor, cfg: BackdoorConfig) -> torch.Tensor:
    out = x.clone()
    s = min(cfg.size, x.shape[-1], x.shape[-2])
    out[..., -s:, -s:] = cfg.value
    return out


def poison(x: torch.Tensor, y: torch.Tensor, cfg: BackdoorConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Trigger and relabel a seeded `fraction` of (x, y); returns new tensors and the poisoned positions."""
    count = int(round(cfg.fraction * len(y)))
    chosen = np.sort(np.random.default_rng(seed).choice(len(y), size=count, replace=False))
    x, y = x.clone(), y.clone()
    if count:
        idx = torch.as_tensor(chosen)
        x[idx] = add_trigger(x[idx], cfg)
        y[idx] = cfg.target
    return x, y, chosen


def triggered_test(x: torch.Tensor, y: torch.Tensor, cfg: BackdoorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Test inputs for ASR: non-target samples with the trigger, labelled with the target."""
    keep = y != cfg.target
    return add_trigger(x[keep], cfg), torch.full((int(keep.sum()),), cfg.target, dtype=y.dtype)
