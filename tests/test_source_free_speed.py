"""The repair's fast forward passes (inference.py) and generator compute what the plain ones did."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from fedunlearn.models import ModelConfig, build_model
from fedunlearn.unlearn.source_free import generator as generator_module
from fedunlearn.unlearn.source_free.generator import GeneratorConfig, sample, train_generator
from fedunlearn.unlearn.source_free.inference import lean_activations, logits
from fedunlearn.unlearn.source_free.support import blend, blended_teacher, class_support, shippable

CPU = torch.device("cpu")
SHAPE = (1, 12, 12)


def cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig("cnn", hidden=16), SHAPE, 4).eval()


def test_channels_last_logits_match_the_plain_forward_pass_and_leave_the_model_trainable():
    model, x = cnn(0), torch.rand(300, *SHAPE)
    with torch.no_grad():
        plain = model(x)
    fast = logits(model, x, CPU, batch_size=128)
    assert torch.allclose(fast, plain, atol=1e-5) and torch.equal(fast.argmax(1), plain.argmax(1))
    # parameters converted outside inference mode: a copy can still be distilled
    loss = F.cross_entropy(model(x[:8]), torch.zeros(8, dtype=torch.long))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_support_over_one_reused_module_matches_a_model_per_client():
    states = [(cnn(seed).state_dict(), n) for seed, n in [(1, 10), (2, 30), (3, 60)]]
    x = torch.rand(200, *SHAPE)
    labels = cnn(0)(x).argmax(1)
    expected = torch.zeros(4)
    counts = torch.bincount(labels, minlength=4).float()
    for state, n in states:
        model = cnn(9)
        model.load_state_dict(state)
        with torch.no_grad():
            pred = model(x).argmax(1)
        expected += (n / 100) * torch.bincount(labels[pred == labels], minlength=4).float() / counts.clamp(min=1)
    expected[counts == 0] = 1.0
    assert torch.allclose(class_support(lambda: cnn(9), states, x, labels, 4, CPU), expected, atol=1e-6)
    # as numpy arrays (what a Ray task gets, read-only): the same support
    shipped = shippable(states)
    for state, _ in shipped:
        for value in state.values():
            value.flags.writeable = False
    assert torch.equal(class_support(lambda: cnn(9), shipped, x, labels, 4, CPU),
                       class_support(lambda: cnn(9), states, x, labels, 4, CPU))


def test_blend_of_stored_logits_is_the_blended_teacher():
    original, reference, x = cnn(0), cnn(1), torch.rand(50, *SHAPE)
    support = torch.tensor([1.0, 0.0, 0.5, 0.25])
    with torch.no_grad():
        from_logits = blend(original(x), reference(x), support, 2.0)
    assert torch.allclose(blended_teacher(original, reference, support, 2.0)(x), from_logits)


def grads_and_outputs(model: torch.nn.Module, x: torch.Tensor):
    """Outputs and the input gradient through a frozen model, as the generator's judges give them."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(out, torch.arange(len(x)) % out.shape[1]), x)
    return out.detach(), grad


def test_lean_activations_give_the_same_outputs_and_input_gradients_and_are_undone():
    for batchnorm in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig("cnn", hidden=16, batchnorm=batchnorm), SHAPE, 4).eval().requires_grad_(False)
        # BatchNorm statistics that are not the identity, so that its outputs differ from its inputs
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
        x = torch.rand(64, *SHAPE) - 0.3
        before = [repr(m) for m in model.modules()]
        keys = list(model.state_dict())
        plain = grads_and_outputs(model, x)
        with lean_activations(model):
            assert [type(m).__name__ for m in model.features][:3] == (
                ["Conv2d", "BatchNorm2d", "MaxPool2d"] if batchnorm else ["Conv2d", "MaxPool2d", "ReLU"])
            assert list(model.state_dict()) == keys
            lean = grads_and_outputs(model, x)
        assert torch.equal(lean[0], plain[0]) and torch.equal(lean[1], plain[1])
        assert [repr(m) for m in model.modules()] == before  # order and in-place flags restored


def test_lean_activations_leave_layers_they_cannot_prove_exact():
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
                                torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2, return_indices=True))
    with lean_activations(model, model):  # listed twice: still changed once
        assert [type(m).__name__ for m in model] == ["Identity", "ReLU", "AvgPool2d", "Conv2d", "ReLU", "MaxPool2d"]
        assert not model[1].inplace and model[4].inplace  # after Identity: its input may be used elsewhere
    shared = torch.nn.ReLU()
    twice = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2), shared), shared)
    with lean_activations(twice):
        assert not shared.inplace  # registered twice: it may run on a tensor someone else still reads


def test_the_generator_trains_and_samples_bit_for_bit_as_without_the_speedups(monkeypatch):
    cfg = GeneratorConfig(steps=6, batch_size=16, width=8, flip=True)
    for batchnorm in (False, True):
        torch.manual_seed(1)
        original = build_model(ModelConfig("cnn", hidden=16, batchnorm=batchnorm), SHAPE, 4)
        judge = build_model(ModelConfig("cnn", hidden=16, batchnorm=batchnorm), SHAPE, 4)
        fast, _ = train_generator(original, SHAPE, 4, cfg, CPU, seed=3, judge=judge)
        with monkeypatch.context() as patch:
            patch.setattr(generator_module, "lean_activations", lambda *models: contextlib.nullcontext())
            plain, _ = train_generator(original, SHAPE, 4, cfg, CPU, seed=3, judge=judge)
            one_batch = sample(plain, range(4), 100, CPU, seed=5, batch_size=100)
        assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values()))
        in_batches = sample(fast, range(4), 100, CPU, seed=5, batch_size=16)
        assert torch.equal(in_batches[1], one_batch[1]) and torch.allclose(in_batches[0], one_batch[0], atol=1e-6)
