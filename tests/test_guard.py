"""The collapse guard of scrub and unrolling_sgd (fedunlearn/unlearn/guard.py) on the small digits task.

At settings where the unguarded method wrecks the model, the guarded one keeps the kept classes'
accuracy; at their defaults both forget the class without collapsing."""

import dataclasses

import pytest
import torch

from fedunlearn.data import ForgetConfig
from fedunlearn.training import accuracy
from fedunlearn.unlearn import scrub, unrolling_sgd
from fedunlearn.unlearn.guard import guard_for

FORGOTTEN = 3


@pytest.fixture(scope="module")
def class_task(digits, digits_task):
    torch.set_num_threads(1)
    task = digits_task(ForgetConfig(kind="class", classes=(FORGOTTEN,)))
    kept = digits.test.subset(torch.nonzero(digits.test.y != FORGOTTEN).flatten())
    return task, kept, accuracy(task.original, kept, "cpu")


def test_guard_judges_on_the_kept_classes_of_the_validation_split(digits, class_task):
    task, _, _ = class_task
    with_val = dataclasses.replace(task, val=digits.test)  # any held-out split: here the test set stands in
    guard = guard_for(with_val, 0.05)
    assert len(guard.data) and FORGOTTEN not in guard.data.y.tolist()
    assert guard.floor == pytest.approx(guard.reference - 0.05) and guard.ok(task.original, "cpu")
    assert guard_for(task, 1.0) is None  # 1 = off
    assert len(guard_for(task, 0.05).data) > 0  # no validation split: a sample of the retain set


def test_scrub_does_not_collapse(class_task):
    task, kept, base = class_task
    wild, _ = scrub.unlearn(task, scrub.Config(lr=0.01, max_drop=1.0))
    safe, stats = scrub.unlearn(task, scrub.Config(lr=0.01))
    assert accuracy(wild, kept, "cpu") < base / 2  # the unguarded ascent feeds on itself: why the guard exists
    assert accuracy(safe, kept, "cpu") > base - 0.1
    assert stats["first_failed_epoch"] >= 1 and stats["returned_epoch"] < stats["epochs"]
    default, stats = scrub.unlearn(task, scrub.Config())
    assert accuracy(default, task.forget, "cpu") < accuracy(task.original, task.forget, "cpu") / 2
    assert accuracy(default, kept, "cpu") > base - 0.1 and stats["guard_acc"] >= stats["guard_reference"] - 0.05


def test_unrolling_step_is_halved_until_the_kept_classes_survive(class_task):
    task, kept, base = class_task
    wild, _ = unrolling_sgd.unlearn(task, unrolling_sgd.Config(max_drop=1.0, hvp_samples=0))
    safe, stats = unrolling_sgd.unlearn(task, unrolling_sgd.Config(hvp_samples=0))
    assert accuracy(wild, kept, "cpu") < base / 2  # the paper's step, extrapolated from w_0, overshoots here
    assert accuracy(safe, kept, "cpu") > base - 0.1 and 0 < stats["scale_used"] < 1
    assert accuracy(safe, task.forget, "cpu") < accuracy(task.original, task.forget, "cpu")
