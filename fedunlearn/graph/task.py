"""What every graph unlearning method receives, and the shape of its answer.

A graph method follows fedunlearn.contract: a module with a frozen dataclass `Config`,
optionally a tuple `MODELS` of the model names it supports and `TARGETS` of the request targets
it handles (None = all), and `unlearn(task, cfg) -> MethodResult(model, stats)`: plain PyTorch.
A method that keeps training-time state (GraphEraser's shards) also has the `prepare(task, cfg)`
hook, run on the graph before the request and not timed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from fedunlearn.cluster import ClusterConfig
from fedunlearn.graph.data import Graph
from fedunlearn.graph.models import GraphTrainConfig
from fedunlearn.graph.requests import GraphRequest


@dataclass
class GraphTask:
    original: nn.Module                # trained on `before`; methods must not modify it
    before: Graph                      # the graph the original was trained on
    after: Graph                       # the graph with the request applied (what retraining sees)
    request: GraphRequest
    train_cfg: GraphTrainConfig        # the original's recipe
    make_model: Callable[[], nn.Module]  # a fresh model of the same architecture, same initialisation
    model_name: str
    seed: int = 0
    workdir: str = ""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
