"""Graph retraining (the reference): the original recipe from the same initialisation on the graph after the request."""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.contract import MethodResult
from fedunlearn.graph.models import train_graph
from fedunlearn.graph.task import GraphTask

MODELS = None


@dataclass(frozen=True)
class Config:
    pass


def unlearn(task: GraphTask, cfg: Config = Config()):
    return MethodResult(train_graph(task.make_model(), task.after, task.train_cfg, seed=task.seed), {})
