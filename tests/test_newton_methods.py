"""Newton-type removal on a problem small enough to solve exactly: logistic regression on the digits pixels.

The original is the exact minimiser of the L2-regularised objective (SGD, then Newton to
convergence), so exact retraining is the retain objective's minimiser, also found by Newton.
"""

import math

import pytest
import torch
from torch import nn

from fedunlearn.config import build
from fedunlearn.data import ForgetConfig, complement, select_forget
from fedunlearn.errors import ConfigError
from fedunlearn.training import TrainConfig, accuracy, train
from fedunlearn.unlearn import UnlearnTask, certified_removal, linear, newton_source_free, sekhari

LAM = 1e-2


@pytest.fixture(scope="module")
def convex(digits, make_digits_model):
    data, make_model = digits, make_digits_model("logistic")
    recipe = TrainConfig(epochs=5, batch_size=64, lr=0.5, weight_decay=LAM)

    sgd = train(make_model(), data.train, recipe, "cpu", seed=0, progress=False)
    phi = linear.features(sgd, data.train, "cpu")
    optimum, _ = certified_removal.newton_removal(linear.head(sgd), phi, data.train.y, LAM, steps=10)
    original = linear.with_head(sgd, optimum)

    def task(forget: ForgetConfig, workdir=""):
        forget_idx = select_forget(data.train.y.numpy(), forget, 0)
        retain_idx = complement(len(data.train), forget_idx)
        return UnlearnTask(original=original, retain=data.train.subset(retain_idx), forget=data.train.subset(forget_idx),
                           train_cfg=recipe, make_model=make_model, num_classes=10, device="cpu",
                           retain_idx=retain_idx, forget_idx=forget_idx, workdir=workdir)

    return data, task


def retain_optimum(task: UnlearnTask) -> torch.Tensor:
    phi = linear.features(task.original, task.retain, "cpu")
    w, _ = certified_removal.newton_removal(linear.head(task.original), phi, task.retain.y, LAM, steps=15)
    return w


def test_hessian_matches_autograd():
    torch.manual_seed(0)
    w, phi, y = torch.randn(3, 5, dtype=torch.float64), torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    loss = lambda v: nn.functional.cross_entropy(phi @ v.reshape(3, 5).T, y, reduction="sum")  # noqa: E731
    assert torch.allclose(linear.hessian_sum(w, phi), torch.autograd.functional.hessian(loss, w.flatten()), atol=1e-10)
    grad = torch.autograd.functional.jacobian(loss, w.flatten()).reshape(3, 5)
    assert torch.allclose(linear.grad_sum(w, phi, y), grad, atol=1e-10)


def test_certified_removal_one_step_lands_on_exact_retraining(convex):
    _, make = convex
    task = make(ForgetConfig(kind="random", fraction=0.05))
    exact = retain_optimum(task)
    model, stats = certified_removal.unlearn(task, certified_removal.Config())
    moved = float((exact - linear.head(task.original)).norm())
    assert moved > 0.1
    assert float((linear.head(model) - exact).norm()) < 0.01 * moved
    # The data-dependent bound holds, and the model is otherwise the original.
    assert stats["gradient_residual"] <= stats["residual_bound"] and stats["certified"] is False
    assert all(torch.equal(a, b) for a, b in zip(list(model.parameters())[:-2], list(task.original.parameters())[:-2]))


def test_certified_removal_with_loss_perturbation_reports_its_budget(convex):
    _, make = convex
    task = make(ForgetConfig(kind="random", fraction=0.05))
    model, stats = certified_removal.unlearn(task, certified_removal.Config(sigma=1.0, epsilon=1.0, delta=1e-4))
    assert stats["residual_budget"] == pytest.approx(1.0 / math.sqrt(2 * math.log(1.5e4)))
    assert stats["certified"] == (stats["residual_bound"] <= stats["residual_budget"])
    # One Newton step lands near the minimiser of the perturbed retain objective.
    report = certified_removal.diagnose(task, certified_removal.Config(sigma=1.0), model)
    assert report["dist_to_optimum"] < 0.05 * stats["step_norm"]


def test_sekhari_without_noise_equals_exact_newton_from_stored_statistics(convex, tmp_path):
    """At the exact optimum, the stored-Hessian update needs no retain data and equals the exact Newton step."""
    _, make = convex
    task = make(ForgetConfig(kind="random", fraction=0.05), workdir=str(tmp_path))
    assert sekhari.prepare(task)["feature_radius"] > 0 and list(tmp_path.iterdir())  # cached at "training time"
    model, stats = sekhari.unlearn(task, sekhari.Config(sigma=0.0))
    newton, _ = certified_removal.unlearn(task, certified_removal.Config())
    assert float((linear.head(model) - linear.head(newton)).norm()) < 1e-6
    assert stats["used_retain_data"] is False and stats["epsilon"] == float("inf")


def test_sekhari_noise_is_calibrated_to_epsilon(convex):
    _, make = convex
    task = make(ForgetConfig(kind="random", fraction=0.05))
    _, calibrated = sekhari.unlearn(task, sekhari.Config(epsilon=2.0, delta=1e-5))
    assert calibrated["epsilon"] == pytest.approx(2.0)
    scale = math.sqrt(2 * math.log(1.25e5))  # sqrt(2 ln(1.25 / delta))
    assert calibrated["sigma"] == pytest.approx(calibrated["gamma"] / 2.0 * scale, rel=1e-9)
    _, fixed = sekhari.unlearn(task, sekhari.Config(sigma=2 * calibrated["sigma"]))
    assert fixed["epsilon"] == pytest.approx(1.0)  # twice the noise buys half the epsilon


def test_newton_source_free_uses_only_the_forget_set_and_reports_its_gap(convex):
    data, make = convex
    task = make(ForgetConfig(kind="random", fraction=0.05))
    w = linear.head(task.original)
    # At the optimum the retain gradient follows from the forget set alone, exactly.
    phi_r, phi_f = (linear.features(task.original, part, "cpu") for part in (task.retain, task.forget))
    exact_grad = linear.grad_sum(w, phi_r, task.retain.y) / len(phi_r) + LAM * w
    estimated = linear.retain_grad_from_optimum(w, phi_f, task.forget.y, len(data.train), LAM)
    assert torch.allclose(estimated, exact_grad, atol=1e-8)

    model, stats = newton_source_free.unlearn(task, newton_source_free.Config())
    report = newton_source_free.diagnose(task, newton_source_free.Config(), model)
    assert stats["used_retain_data"] is False
    assert 0 < report["dist_to_exact_newton"] < report["exact_newton_step_norm"]  # better than not moving
    assert 0 < report["hessian_rel_error"] < 1
    assert accuracy(model, data.test, "cpu") > 0.9


def test_newton_source_free_synthetic_hessian_removes_a_class(convex):
    """Class removal breaks the forget-set Hessian's assumption; synthetic samples of the other classes fix it."""
    data, make = convex
    task = make(ForgetConfig(kind="class", classes=(3,)))
    runs = {}
    for hessian in ("forget", "classwise"):
        cfg = newton_source_free.Config(hessian=hessian)
        model, _ = newton_source_free.unlearn(task, cfg)
        runs[hessian] = (model, newton_source_free.diagnose(task, cfg, model))
    forget_only, classwise = runs["forget"][0], runs["classwise"][0]
    assert accuracy(forget_only, task.forget, "cpu") > 0.5  # the paper's estimate does not remove the class
    assert accuracy(classwise, task.forget, "cpu") < 0.1
    assert accuracy(classwise, data.test, "cpu") > 0.8


def test_newton_methods_reject_bad_input(convex):
    _, make = convex
    with pytest.raises(ConfigError, match="newton_steps"):
        build(certified_removal.Config, {"newton_steps": 0})
    with pytest.raises(ConfigError, match="unknown config key 'sigm'"):
        build(newton_source_free.Config, {"sigm": 1.0})
    with pytest.raises(ConfigError, match="hessian"):
        build(newton_source_free.Config, {"hessian": "exact"})
    with pytest.raises(ConfigError, match="min_class_samples"):
        build(newton_source_free.Config, {"min_class_samples": 0})
    with pytest.raises(ConfigError, match="epsilon"):
        build(sekhari.Config, {"epsilon": 0.0})
    task = make(ForgetConfig(kind="random", fraction=0.05))
    with pytest.raises(ConfigError, match="no nn.Linear"):
        certified_removal.unlearn(UnlearnTask(**{**task.__dict__, "original": nn.Sequential(nn.Flatten())}))
    wide = nn.Sequential(nn.Flatten(), nn.Linear(64, 1000))
    with pytest.raises(ConfigError, match="exact Hessian"):
        newton_source_free.unlearn(UnlearnTask(**{**task.__dict__, "original": wide}))
    no_decay = UnlearnTask(**{**task.__dict__, "train_cfg": TrainConfig(weight_decay=0.0)})
    with pytest.raises(ConfigError, match="weight_decay"):
        certified_removal.unlearn(no_decay)
