"""What every centralized unlearning method receives, and the shape of its answer.

A method is a module with a frozen dataclass `Config` (defaults that work) and a function
`unlearn(task, cfg) -> MethodResult(model, stats)`: plain PyTorch, runnable and testable
without Ray. The whole contract, optional hooks included, is in fedunlearn/contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.contract import MethodResult
from fedunlearn.training import TrainConfig

if TYPE_CHECKING:
    from fedunlearn.cluster.ray_env import ClusterConfig


@dataclass
class UnlearnTask:
    original: nn.Module                # trained on retain + forget; methods must not modify it
    retain: ArrayDataset
    forget: ArrayDataset
    train_cfg: TrainConfig             # the original model's recipe (retrain reuses it exactly)
    make_model: Callable[[], nn.Module]  # a fresh, untrained model of the same architecture
    num_classes: int
    device: torch.device
    seed: int = 0
    # Positions of retain / forget samples in the original training set (SISA needs them).
    retain_idx: np.ndarray | None = None
    forget_idx: np.ndarray | None = None
    workdir: str = ""                  # where a method may keep checkpoints between requests
    # Size of the original training set (positions 0..train_size-1); 0 = len(retain) + len(forget).
    # Larger when earlier requests already removed samples (continual unlearning).
    train_size: int = 0
    cluster: ClusterConfig | None = None  # Ray resources a method may fan out on; None = the defaults
    val: ArrayDataset | None = None    # validation split (data.val_size): for any tuning or early stopping


Stats = dict  # free-form numbers a method reports (steps, epsilons, retrained shards, ...)

__all__ = ["MethodResult", "Stats", "UnlearnTask"]
