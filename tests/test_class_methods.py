"""Class forgetting by output filtering, bad teaching and error-maximizing noise, on digits."""

import io

import pytest
import torch

from fedunlearn.config import build
from fedunlearn.data import ForgetConfig
from fedunlearn.errors import ConfigError
from fedunlearn.metrics import l2_distance
from fedunlearn.training import accuracy
from fedunlearn.unlearn import METHODS, bad_teacher, error_max_noise, linear_filtration

FORGOTTEN = 3


@pytest.fixture(scope="module")
def class3(digits, digits_task):
    """(the task of forgetting class FORGOTTEN, the task factory, the test samples of the other classes)."""
    kept = digits.test.subset(torch.nonzero(digits.test.y != FORGOTTEN).flatten())
    return digits_task(ForgetConfig(kind="class", classes=(FORGOTTEN,))), digits_task, kept


def test_filtration_matrix_maps_class_means_to_their_targets():
    torch.manual_seed(0)
    means = torch.softmax(3 * torch.eye(4, dtype=torch.float64) + torch.rand(4, 4, dtype=torch.float64), dim=0)
    filt = linear_filtration.filtration_matrix(means, [1])
    mapped = filt @ means
    assert torch.allclose(mapped[1], torch.zeros(4, dtype=torch.float64), atol=1e-10)   # class 1 never predicted
    assert torch.allclose(mapped.sum(0), torch.ones(4, dtype=torch.float64), atol=1e-10)  # still distributions
    assert torch.allclose(mapped[:, 0] / mapped[:, 0].sum(), mapped[:, 0], atol=1e-10)


def test_linear_filtration_forgets_the_class_without_touching_weights(class3):
    task, _, kept = class3
    model, stats = linear_filtration.unlearn(task, linear_filtration.Config())
    assert accuracy(task.original, task.forget, "cpu") > 0.9
    assert accuracy(model, task.forget, "cpu") < 0.05
    assert accuracy(model, kept, "cpu") >= accuracy(task.original, kept, "cpu") - 0.02
    assert l2_distance(model, task.original) == 0.0 and stats["forgotten_classes"] == [FORGOTTEN]
    # The filter survives a checkpoint round trip (the runner saves whole modules).
    buf = io.BytesIO()
    torch.save(model, buf)
    reloaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert accuracy(reloaded, task.forget, "cpu") < 0.05


def test_linear_filtration_refuses_sample_forgetting(class3):
    _, make, _ = class3
    with pytest.raises(ConfigError, match="whole classes"):
        linear_filtration.unlearn(make(ForgetConfig(kind="random", fraction=0.1)))
    assert linear_filtration.CLASS_FORGETTING_ONLY


def test_bad_teacher_drives_forget_accuracy_down(class3):
    task, _, kept = class3
    model, stats = bad_teacher.unlearn(task, bad_teacher.Config(lr=1e-3, epochs=3))
    assert accuracy(model, task.forget, "cpu") < accuracy(task.original, task.forget, "cpu") - 0.5
    assert accuracy(model, kept, "cpu") > 0.8
    assert stats["retain_samples"] == round(0.3 * len(task.retain))


def test_error_max_noise_impairs_then_repairs(class3):
    task, _, kept = class3
    model, stats = error_max_noise.unlearn(task, error_max_noise.Config(noise_steps=20, noise_samples=128))
    assert accuracy(model, task.forget, "cpu") < 0.2
    assert accuracy(model, kept, "cpu") > 0.8
    assert stats["noise_classes"] == [FORGOTTEN]


def test_class_methods_reject_bad_config():
    with pytest.raises(ConfigError, match="temperature"):
        build(bad_teacher.Config, {"temperature": 0.0})
    with pytest.raises(ConfigError, match="retain_fraction"):
        build(bad_teacher.Config, {"retain_fraction": 1.5})
    with pytest.raises(ConfigError, match="noise_steps"):
        build(error_max_noise.Config, {"noise_steps": 0})
    with pytest.raises(ConfigError, match="unknown config key"):
        build(linear_filtration.Config, {"classes": [1]})


def test_every_seed_method_is_registered_with_working_defaults():
    for name in ("certified_removal", "newton_source_free", "sekhari", "deltagrad", "unrolling_sgd",
                 "linear_filtration", "bad_teacher", "error_max_noise"):
        module = METHODS.get(name)
        assert METHODS.describe(name) and module.Config() == build(module.Config, {})
