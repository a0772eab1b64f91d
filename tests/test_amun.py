"""AMUN: the doubling adversarial search, fine-tuning, the Ray fan-out and continual requests (digits, MLP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.config import build
from fedunlearn.data import complement
from fedunlearn.errors import ConfigError
from fedunlearn.training import TrainConfig, accuracy, predict_probs, train
from fedunlearn.unlearn import METHODS, UnlearnTask
from fedunlearn.unlearn import amun

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(digits, make_digits_model):
    data, make_model = digits, make_digits_model("mlp", hidden=64)
    recipe = TrainConfig(epochs=30, batch_size=32)
    original = train(make_model(), data.train, recipe, CPU, seed=0, progress=False)
    return data, make_model, recipe, original


def task_for(setup, forget_idx, gone=(), original=None) -> UnlearnTask:
    data, make_model, recipe, trained = setup
    forget_idx = np.asarray(forget_idx)
    retain_idx = complement(len(data.train), np.union1d(forget_idx, np.asarray(gone, dtype=np.int64)))
    return UnlearnTask(original=original or trained, retain=data.train.subset(retain_idx),
                       forget=data.train.subset(forget_idx), train_cfg=recipe, make_model=make_model,
                       num_classes=10, device=CPU, seed=0, retain_idx=retain_idx, forget_idx=forget_idx)


def linear_two_class() -> tuple[nn.Module, torch.Tensor]:
    """logit0 = u.x, logit1 = 0 on 2x2 images: a sample with u.x = a needs an L2 step of just over a."""
    u = torch.tensor([1.0, -1.0, 1.0, -1.0]) / 2  # unit length, sums to 0
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([u, torch.zeros(4)]))
        model[1].bias.zero_()
    margins = torch.tensor([0.03, 0.1, 0.5])
    x = (0.5 + margins[:, None] * u[None]).view(3, 1, 2, 2)
    return model, x


def test_radius_doubles_until_the_prediction_changes():
    model, x = linear_two_class()
    found = amun.nearest_adversarial(model, x, amun.Config(eps=0.04, steps=50), CPU)
    assert found["found"].all()
    assert found["radius"].tolist() == pytest.approx([0.04, 0.16, 0.64])
    assert (found["y_adv"] == 1).all()  # labelled with the model's new prediction
    dist = (found["x_adv"] - x).flatten(1).norm(dim=1)
    assert (dist > torch.tensor([0.03, 0.1, 0.5])).all() and (dist <= found["radius"] + 1e-5).all()
    assert ((found["x_adv"] >= 0) & (found["x_adv"] <= 1)).all()


def test_a_sample_beyond_the_largest_radius_is_left_out():
    model, x = linear_two_class()
    found = amun.nearest_adversarial(model, x, amun.Config(eps=0.04, steps=20, max_doublings=1), CPU)
    assert found["found"].tolist() == [True, False, False]  # 0.08 reaches only the first
    assert torch.equal(found["x_adv"][1:], x[1:]) and (found["y_adv"][1:] == 0).all()


def test_bad_config_is_reported():
    with pytest.raises(ConfigError, match="steps"):
        build(amun.Config, {"steps": 0})
    with pytest.raises(ConfigError, match="unknown config key 'methods.amun.epsilon'"):
        build(amun.Config, {"epsilon": 0.1}, "methods.amun")


def test_unlearning_lowers_confidence_on_the_forget_set_only(setup):
    data, _, _, original = setup
    before = {k: v.clone() for k, v in original.state_dict().items()}
    forget_idx = np.arange(0, len(data.train), 10)
    task = task_for(setup, forget_idx)
    model, stats = METHODS.get("amun").unlearn(task, amun.Config(chunks=1, steps=20, epochs=5))
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())  # original untouched
    assert stats["adversarial"] + stats["not_found"] == len(forget_idx) and stats["adversarial"] > 0
    conf = lambda m: predict_probs(m, task.forget, CPU).gather(1, task.forget.y.view(-1, 1)).mean().item()  # noqa: E731
    assert conf(model) < conf(original)
    assert accuracy(model, data.test, CPU) > accuracy(original, data.test, CPU) - 0.1


def test_ray_fan_out_finds_the_same_adversarial_examples(setup):
    task = task_for(setup, np.arange(0, 200, 5))
    local = amun.search(task, task.original, amun.Config(steps=20, chunks=1))
    fanned = amun.search(task, task.original, amun.Config(steps=20, chunks=3))
    assert torch.equal(local["found"], fanned["found"])
    assert (local["radius"] == fanned["radius"]).float().mean() >= 0.95
    assert (local["y_adv"] == fanned["y_adv"]).float().mean() >= 0.95


def test_continual_requests_keep_the_model_useful(setup):
    data, _, _, original = setup
    requests = np.array_split(np.random.default_rng(0).permutation(len(data.train))[:90], 3)
    model, gone = original, np.array([], dtype=np.int64)
    for forget_idx in requests:
        task = task_for(setup, np.sort(forget_idx), gone=gone, original=model)
        model, _ = amun.unlearn(task, amun.Config(chunks=2, steps=20, epochs=5))
        gone = np.union1d(gone, forget_idx)
        assert accuracy(model, data.test, CPU) > accuracy(original, data.test, CPU) - 0.1
