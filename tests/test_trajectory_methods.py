"""DeltaGrad and unrolling SGD: methods that reason about the training trajectory, on digits."""

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from fedunlearn.config import build
from fedunlearn.data import DataConfig, ForgetConfig, complement, load_dataset, select_forget
from fedunlearn.errors import ConfigError
from fedunlearn.metrics import l2_distance
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, seed_everything, train
from fedunlearn.unlearn import UnlearnTask, deltagrad, unrolling_sgd


def make_task(recipe: TrainConfig, model: str = "logistic", fraction: float = 0.05, workdir: str = "") -> UnlearnTask:
    data = load_dataset(DataConfig(name="digits"), 0)

    def make_model():
        seed_everything(0)
        return build_model(ModelConfig(name=model, hidden=32), data.input_shape, 10)

    original = train(make_model(), data.train, recipe, "cpu", seed=0, progress=False)
    forget_idx = select_forget(data.train.y.numpy(), ForgetConfig(kind="random", fraction=fraction), 0)
    retain_idx = complement(len(data.train), forget_idx)
    return UnlearnTask(original=original, retain=data.train.subset(retain_idx), forget=data.train.subset(forget_idx),
                       train_cfg=recipe, make_model=make_model, num_classes=10, device="cpu",
                       retain_idx=retain_idx, forget_idx=forget_idx, workdir=workdir)


def test_lbfgs_product_satisfies_the_secant_condition():
    torch.manual_seed(0)
    a = torch.randn(6, 6)
    a = a @ a.T + torch.eye(6)  # a convex quadratic's Hessian
    model = deltagrad.LBFGS(history=2)
    for s in torch.randn(3, 6):
        model.add(s, a @ s)
    assert len(model) == 2
    assert torch.allclose(model.product(s), a @ s, atol=1e-4)


def test_deltagrad_records_the_original_and_approximates_exact_replay(tmp_path):
    """In the convex case the approximate replay stays close to replaying every step exactly."""
    task = make_task(TrainConfig(epochs=10, batch_size=64, lr=0.05, weight_decay=5e-3), workdir=str(tmp_path))
    info = deltagrad.prepare(task)
    assert info["replay_l2_to_original"] == 0.0 and info["steps"] == 10 * 23
    model, stats = deltagrad.unlearn(task, deltagrad.Config())
    assert stats["approx_steps"] > stats["exact_steps"]  # most steps touch only the forget samples
    exact, _ = deltagrad.unlearn(task, deltagrad.Config(period=1))  # every step exact: naive retraining
    assert l2_distance(model, exact) < 0.3 * l2_distance(task.original, exact)
    paper, plain = deltagrad.unlearn(task, deltagrad.Config(max_gradient_error=float("inf")))
    assert plain["fallback_exact_steps"] == 0 and l2_distance(paper, exact) < 0.3 * l2_distance(task.original, exact)


def test_deltagrad_falls_back_to_exact_steps_when_the_quasi_newton_model_fails(tmp_path):
    """Forgetting a large share from a non-convex net: the safeguard keeps the replay exact and finite."""
    task = make_task(TrainConfig(epochs=4, batch_size=64, lr=0.1), model="mlp", fraction=0.3, workdir=str(tmp_path))
    model, stats = deltagrad.unlearn(task, deltagrad.Config())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert stats["exact_steps"] + stats["approx_steps"] == stats["steps"]
    assert stats["gradient_rel_error"] > 0


def test_deltagrad_needs_positions_and_valid_config():
    task = make_task(TrainConfig(epochs=1, batch_size=64, weight_decay=5e-3))
    with pytest.raises(ConfigError, match="retain_idx"):
        deltagrad.unlearn(UnlearnTask(**{**task.__dict__, "retain_idx": None}))
    with pytest.raises(ConfigError, match="period"):
        build(deltagrad.Config, {"period": 0})


def test_unrolling_is_exact_for_one_plain_gradient_step():
    """One full-batch step of plain GD: adding back the forget gradients at w_0 removes them exactly."""
    recipe = TrainConfig(epochs=1, batch_size=2000, lr=0.5, momentum=0.0, weight_decay=0.0, schedule="constant")
    task = make_task(recipe, fraction=0.1)
    model, stats = unrolling_sgd.unlearn(task, unrolling_sgd.Config(max_drop=1.0))  # the paper's step, unguarded
    init = task.make_model()
    init.zero_grad()
    n = len(task.retain) + len(task.forget)
    (torch.nn.functional.cross_entropy(init(task.retain.x), task.retain.y, reduction="sum") / n).backward()
    expected = parameters_to_vector(init.parameters()) - 0.5 * parameters_to_vector([p.grad for p in init.parameters()])
    assert torch.allclose(parameters_to_vector(model.parameters()), expected.detach(), atol=1e-5)
    assert stats["verification_error_est"] >= 0 and stats["step_norm"] > 0


def test_unrolling_config_is_checked():
    with pytest.raises(ConfigError, match="scale"):
        build(unrolling_sgd.Config, {"scale": -1.0})
    with pytest.raises(ConfigError, match="unknown config key"):
        build(unrolling_sgd.Config, {"lr": 0.1})
