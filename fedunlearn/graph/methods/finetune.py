"""Graph fine-tuning (baseline): continue training the original on the graph after the request.

The optimiser is the original recipe's (full-batch Adam, weight decay), for a fraction of its epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fedunlearn.config import check_range
from fedunlearn.contract import MethodResult
from fedunlearn.graph.models import train_graph
from fedunlearn.graph.task import GraphTask
from fedunlearn.training import clone

MODELS = None


@dataclass(frozen=True)
class Config:
    epochs: int = 20
    lr_scale: float = 1.0   # times the recipe's learning rate

    def __post_init__(self):
        check_range("epochs", self.epochs, 1)
        check_range("lr_scale", self.lr_scale, 0.0)


def unlearn(task: GraphTask, cfg: Config = Config()):
    recipe = dataclasses.replace(task.train_cfg, epochs=cfg.epochs, lr=task.train_cfg.lr * cfg.lr_scale)
    model = train_graph(clone(task.original), task.after, recipe, seed=task.seed + 1)
    return MethodResult(model, {"epochs": cfg.epochs})
