"""The one evaluation every method goes through: accuracies, MIA, distance to the retrained model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.metrics.distance import avg_gap, js_divergence, l2_distance, speedup
from fedunlearn.metrics.mia import Feature, sample_feature, svc_mia
from fedunlearn.training import predict_probs


@dataclass(frozen=True)
class EvalConfig:
    mia_feature: Feature = "confidence"
    mia_max_samples: int = 2000   # per class of the attack's training set (SVC cost is quadratic)
    eval_retain_size: int = 5000  # retain accuracy on a seeded sample of this size; 0 = all


@dataclass
class Splits:
    """What a model is judged on. `extra` holds named sets such as triggered test inputs."""

    retain: ArrayDataset
    forget: ArrayDataset
    test: ArrayDataset
    extra: dict[str, ArrayDataset] | None = None


@dataclass
class Outputs:
    """A model's softmax outputs on each split, computed once and reused by every metric."""

    retain: torch.Tensor
    forget: torch.Tensor
    test: torch.Tensor
    extra: dict[str, torch.Tensor]


def model_outputs(model: nn.Module, splits: Splits, device) -> Outputs:
    extra = {k: predict_probs(model, v, device) for k, v in (splits.extra or {}).items()}
    return Outputs(predict_probs(model, splits.retain, device), predict_probs(model, splits.forget, device),
                   predict_probs(model, splits.test, device), extra)


def _acc(probs: torch.Tensor, data: ArrayDataset) -> float:
    return float((probs.argmax(1) == data.y).float().mean()) if len(data) else float("nan")


def evaluate(model: nn.Module, splits: Splits, device, cfg: EvalConfig = EvalConfig(), seed: int = 0) -> tuple[dict, Outputs]:
    """Accuracies (fractions) and MIA of one model; `extra` sets give `<name>_acc`."""
    out = model_outputs(model, splits, device)
    return score_outputs(out, splits, cfg, seed), out


def score_outputs(out: Outputs, splits: Splits, cfg: EvalConfig = EvalConfig(), seed: int = 0) -> dict:
    """evaluate()'s row from outputs already computed (e.g. the softmax of logits kept anyway)."""
    row = {"test_acc": _acc(out.test, splits.test), "retain_acc": _acc(out.retain, splits.retain),
           "forget_acc": _acc(out.forget, splits.forget)}
    for name, probs in out.extra.items():
        row[f"{name}_acc"] = _acc(probs, splits.extra[name])
    feat = lambda p, d: sample_feature(p, d.y, cfg.mia_feature)  # noqa: E731
    mia = svc_mia(feat(out.retain, splits.retain), feat(out.test, splits.test), feat(out.forget, splits.forget),
                  seed=seed, max_per_class=cfg.mia_max_samples)
    row["mia_efficacy"], row["mia_auc"] = mia.efficacy, mia.auc
    return row


def compare_to_reference(row: dict, out: Outputs, model: nn.Module, ref_row: dict, ref_out: Outputs,
                         ref_model: nn.Module, ref_seconds: float) -> dict:
    """Adds js_to_retrain (on forget + test inputs), l2_to_retrain, avg_gap and speedup to `row`."""
    p = torch.cat([out.forget, out.test])
    q = torch.cat([ref_out.forget, ref_out.test])
    row["js_to_retrain"] = js_divergence(p, q)
    row["l2_to_retrain"] = l2_distance(model, ref_model)
    row["avg_gap"] = avg_gap(row, ref_row)
    row["speedup"] = speedup(ref_seconds, row["wall_s"])
    return row
