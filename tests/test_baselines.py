"""The four baselines every unlearning paper compares against, on digits with a small MLP."""

import pytest
import torch

from fedunlearn.config import build
from fedunlearn.data import DataConfig, ForgetConfig, complement, load_dataset, select_forget
from fedunlearn.errors import ConfigError
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, accuracy, seed_everything, train
from fedunlearn.unlearn import METHODS, UnlearnTask
from fedunlearn.unlearn import gradient_ascent, l1_sparse, salun, scrub

FORGOTTEN = 3


@pytest.fixture(scope="module")
def digits():
    data = load_dataset(DataConfig(name="digits"), 0)
    recipe = TrainConfig(epochs=15, batch_size=64, lr=0.05)

    def make_model():
        seed_everything(0)
        return build_model(ModelConfig(name="mlp", hidden=64), data.input_shape, 10)

    original = train(make_model(), data.train, recipe, "cpu", seed=0, progress=False)
    forget_idx = select_forget(data.train.y.numpy(), ForgetConfig(kind="class", classes=(FORGOTTEN,)), 0)
    retain_idx = complement(len(data.train), forget_idx)
    task = UnlearnTask(original=original, retain=data.train.subset(retain_idx), forget=data.train.subset(forget_idx),
                       train_cfg=recipe, make_model=make_model, num_classes=10, device=torch.device("cpu"))
    kept = data.test.subset(torch.nonzero(data.test.y != FORGOTTEN).flatten())
    return task, kept


def _check(task, kept, model, drop=0.5, keep=0.8):
    before = {n: p.clone() for n, p in task.original.state_dict().items()}
    assert accuracy(task.original, task.forget, "cpu") > 0.9
    assert accuracy(model, task.forget, "cpu") < accuracy(task.original, task.forget, "cpu") - drop
    assert accuracy(model, kept, "cpu") > keep
    assert all(torch.equal(before[n], p) for n, p in task.original.state_dict().items())  # original untouched


def test_registered_with_working_defaults():
    for name in ("gradient_ascent", "l1_sparse", "salun", "scrub"):
        assert METHODS.get(name).Config() is not None and METHODS.describe(name)
    with pytest.raises(ConfigError, match="fraction"):
        build(salun.Config, {"fraction": 1.5}, "methods.salun")


def test_gradient_ascent_forgets_the_class(digits):
    task, kept = digits
    model, stats = gradient_ascent.unlearn(task, gradient_ascent.Config(lr=0.01, epochs=2))
    _check(task, kept, model, keep=0.6)
    assert stats["steps"] > 0


def test_l1_sparse_shrinks_weights_and_keeps_accuracy(digits):
    task, kept = digits
    model, stats = l1_sparse.unlearn(task, l1_sparse.Config(epochs=3, alpha=0.02))
    dense, _ = l1_sparse.unlearn(task, l1_sparse.Config(epochs=3, alpha=0.0))
    assert stats["l1_norm"] < float(l1_sparse.l1_norm(dense).detach()) * 0.95
    assert accuracy(model, kept, "cpu") > 0.9
    assert accuracy(model, task.forget, "cpu") <= accuracy(dense, task.forget, "cpu") + 0.02


def test_salun_updates_only_salient_weights(digits):
    task, kept = digits
    mask = salun.saliency_mask(task.original, task.forget, 0.3, "cpu")
    share = sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert float(share) == pytest.approx(0.3, abs=0.01)
    model, stats = salun.unlearn(task, salun.Config(fraction=0.3, epochs=2))
    _check(task, kept, model)
    new, old = dict(model.named_parameters()), dict(task.original.named_parameters())
    for name, m in mask.items():
        frozen = m == 0
        assert torch.equal(new[name][frozen], old[name][frozen])
    assert stats["masked_fraction"] == pytest.approx(0.3, abs=0.01)


def test_scrub_moves_away_from_teacher_on_forget_only(digits):
    task, kept = digits
    model, stats = scrub.unlearn(task, scrub.Config())
    _check(task, kept, model)
    assert stats["max_steps"] > 0 and stats["min_steps"] > stats["max_steps"]
