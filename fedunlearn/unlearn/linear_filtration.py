"""Linear filtration (Baumhauer, Schoettle, Zeppelzauer, Machine Learning 2022): forget classes with a filter on the outputs.

Class removal without touching the weights: a K x K matrix F is applied to the model's softmax
output, p' = F p. It is fitted on the model's average behaviour: A holds, per class k, the mean
output on training samples of class k; the target B is A with the forgotten classes' entries set
to zero and each column renormalised, so their probability mass goes to the remaining classes
in proportion to what the model already gives them (a forgotten class's samples end up labelled
as its nearest remaining classes, as a model never trained on it would). F = B A^-1 maps every
class's average output to its target. Only class removal is defined: the forget set must be all
training samples of some classes. The weights are unchanged (so l2_to_retrain is the
original's); the filter rides on the copy as a buffer applied by a forward hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.config import check_range
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.errors import ConfigError
from fedunlearn.training import clone, predict_probs
from fedunlearn.unlearn.base import Stats, UnlearnTask

CLASS_FORGETTING_ONLY = True  # experiment runners skip this method for random-sample forgetting


@dataclass(frozen=True)
class Config:
    samples_per_class: int = 500  # training samples averaged per class to estimate A

    def __post_init__(self):
        check_range("samples_per_class", self.samples_per_class, 1)


def forgotten_classes(task: UnlearnTask) -> list[int]:
    classes = sorted(set(task.forget.y.tolist()))
    shared = sorted(set(classes) & set(task.retain.y.tolist()))
    if shared:
        raise ConfigError(f"linear_filtration removes whole classes, but classes {shared} are in both the forget and "
                          "the retain set; use forget.kind = 'class'")
    if len(classes) >= task.num_classes:
        raise ConfigError("linear_filtration cannot forget every class")
    return classes


def filtration_matrix(mean_outputs: torch.Tensor, forget: list[int]) -> torch.Tensor:
    """F = B A^-1 for A = mean_outputs (column k: mean softmax on class k) and B as in the module docstring."""
    target = mean_outputs.clone()
    target[forget, :] = 0.0
    target = target / target.sum(0, keepdim=True).clamp_min(1e-12)
    return target @ torch.linalg.pinv(mean_outputs)


def apply_filter(module: nn.Module, _inputs, logits: torch.Tensor) -> torch.Tensor:
    """Forward hook: logits -> log(F softmax(logits)), so that softmax of the output is the filtered p."""
    probs = torch.softmax(logits, dim=1) @ module.output_filter.T.to(logits)
    return probs.clamp_min(1e-12).log()


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    forget = forgotten_classes(task)
    data = ArrayDataset.concat(task.retain, task.forget)
    gen = torch.Generator().manual_seed(task.seed + 19)
    columns = []
    for k in range(task.num_classes):
        idx = torch.nonzero(data.y == k).flatten()
        if len(idx) == 0:
            raise ConfigError(f"linear_filtration needs training samples of every class; class {k} has none")
        idx = idx[torch.randperm(len(idx), generator=gen)[:cfg.samples_per_class]]
        columns.append(predict_probs(task.original, data.subset(idx), task.device).double().mean(0))
    mean_outputs = torch.stack(columns, dim=1)
    filt = filtration_matrix(mean_outputs, forget).float()

    model = clone(task.original)
    if hasattr(model, "output_filter"):  # a second request: A was measured through the first filter, so compose
        model.output_filter = filt @ model.output_filter
    else:
        model.register_buffer("output_filter", filt, persistent=False)  # not in state_dict: weights stay comparable
        model.register_forward_hook(apply_filter)
    stats = Stats(forgotten_classes=forget, condition_number=float(torch.linalg.cond(mean_outputs)))
    return model.eval(), stats
