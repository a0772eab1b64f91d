"""Backdoor triggers that mark a client's data, so forgetting it can be verified.

A poisoned sample carries the trigger and the target label. Triggers:
  square        a bright square patch of side `size`;
  checkerboard  the same patch filled with alternating bright and dark pixels;
  blended       a fixed full-image pattern mixed into the image with weight `blend`
                (Chen et al. 2017, "Targeted backdoor attacks ... using data poisoning").
A patch sits at `position`: one of the four corners or the centre. Attack success rate (ASR)
is measured on triggered test inputs whose true label is not the target: the share
classified as the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedunlearn.config import check_range

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "centre")
BOOST_RULES = ("none", "participants", "share")
SOURCES = ("any", "non_target")


@dataclass(frozen=True)
class BackdoorConfig:
    fraction: float = 0.0   # share of the departing client's samples that carry the trigger
    target: int = 0         # label the trigger maps to
    size: int = 3           # side of the patch, in pixels (square, checkerboard)
    value: float = 1.0      # patch intensity (inputs are scaled to [0, 1])
    position: Literal["bottom-right", "bottom-left", "top-right", "top-left", "centre"] = "bottom-right"
    pattern: Literal["square", "checkerboard", "blended"] = "square"
    blend: float = 0.2      # weight of the full-image pattern (pattern = "blended")
    local_epochs: int = 0   # the attacker's local epochs per training round (0 = the federation's recipe)
    # Model replacement (Bagdasaryan et al., "How to backdoor federated learning", AISTATS 2020):
    # in a training round the attacker sends global + gamma * (its local model - global), so its
    # update survives being averaged with the honest ones. gamma = boost times
    #   "none"          1;
    #   "participants"  the clients per round (the paper's gamma = n / eta, FedAvg's eta = 1);
    #   "share"         the inverse of its expected share of the round's sample weight, i.e. the
    #                   clients per round x the mean client size / its own size: FedAvg weights by
    #                   samples, so this is the paper's rule for weighted averaging (boost = 1
    #                   replaces the global model; the attacker knows the federation's size and
    #                   mean client size, the paper's white-box threat model).
    # A rule sizes the boost for any federation, never below 1. boost = 1 with boost_by = "none" is a
    # plain client.
    boost: float = 1.0
    boost_by: Literal["none", "participants", "share"] = "none"
    # Neurotoxin (Zhang et al., ICML 2022; fedunlearn/federated/durable.py): in a training round the
    # attacker leaves this fraction of the model's coordinates unchanged, the ones its estimate of the
    # benign update (its own clean-data update from the received global) moves most, and trains the
    # backdoor on the rest, where the honest rounds after it rarely write. 0 = off.
    mask_top: float = 0.0
    # which samples get the trigger: "any" of them, or only those not labelled `target` (BadNets,
    # Gu et al. 2017: a target-class sample with the trigger teaches nothing about trigger -> target,
    # and a label-skewed client may hold mostly the target class); "non_target" caps the count at
    # the client's non-target samples
    source: Literal["any", "non_target"] = "any"

    def __post_init__(self):
        check_range("backdoor.fraction", self.fraction, 0.0, 1.0)
        check_range("backdoor.size", self.size, 1)
        check_range("backdoor.blend", self.blend, 0.0, 1.0)
        check_range("backdoor.local_epochs", self.local_epochs, 0)
        check_range("backdoor.boost", self.boost, 0.01, 1000.0)
        check_range("backdoor.mask_top", self.mask_top, 0.0, 0.99)
        if self.mask_top and self.fraction >= 1.0:
            raise ValueError("'backdoor.mask_top' > 0 estimates the benign update on the attacker's clean samples: "
                             "give backdoor.fraction < 1")
        if self.source not in SOURCES:
            raise ValueError(f"'backdoor.source' = {self.source!r}: give one of {', '.join(SOURCES)}")
        if self.boost_by not in BOOST_RULES:
            raise ValueError(f"'backdoor.boost_by' = {self.boost_by!r}: give one of {', '.join(BOOST_RULES)}")

    @property
    def boosted(self) -> bool:
        return self.boost != 1.0 or self.boost_by != "none"

    def gamma(self, participants: int, own_size: int = 1, mean_size: float = 1.0) -> float:
        """The attacker's update scale in a round of `participants` clients (see `boost`)."""
        # a rule never scales an update down: a client that already holds much of a round's weight
        # (the largest of a skewed federation) sends at least its plain update
        if self.boost_by == "participants":
            return max(1.0, self.boost * participants)
        if self.boost_by == "share":
            return max(1.0, self.boost * participants * mean_size / max(own_size, 1))
        return self.boost


def _window(height: int, width: int, s: int, position: str) -> tuple[slice, slice]:
    if position == "centre":
        top, left = (height - s) // 2, (width - s) // 2
    else:
        top = 0 if position.startswith("top") else height - s
        left = 0 if position.endswith("left") else width - s
    return slice(top, top + s), slice(left, left + s)


def blend_pattern(shape: tuple[int, ...]) -> torch.Tensor:
    """The blended trigger: a fixed pseudo-random image in [0, 1] (the same for every run and client)."""
    gen = torch.Generator().manual_seed(20170101)
    return torch.rand(shape, generator=gen)


def add_trigger(x: torch.Tensor, cfg: BackdoorConfig) -> torch.Tensor:
    out = x.clone()
    height, width = x.shape[-2], x.shape[-1]
    if cfg.pattern == "blended":
        return (1.0 - cfg.blend) * out + cfg.blend * blend_pattern(tuple(x.shape[-3:]) if x.dim() >= 3 else (height, width))
    s = min(cfg.size, height, width)
    rows, cols = _window(height, width, s, cfg.position)
    if cfg.pattern == "checkerboard":
        board = (torch.arange(s)[:, None] + torch.arange(s)[None, :]) % 2 == 0
        out[..., rows, cols] = torch.where(board, torch.tensor(cfg.value, dtype=x.dtype), torch.tensor(0.0, dtype=x.dtype))
    else:
        out[..., rows, cols] = cfg.value
    return out


def poison(x: torch.Tensor, y: torch.Tensor, cfg: BackdoorConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Trigger and relabel a seeded `fraction` of (x, y); returns new tensors and the poisoned positions."""
    count = int(round(cfg.fraction * len(y)))
    if cfg.source == "non_target":
        pool = np.flatnonzero(y.numpy() != cfg.target)
        chosen = np.sort(np.random.default_rng(seed).choice(pool, size=min(count, len(pool)), replace=False))
    else:
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
