"""The repair's fast forward passes (inference.py) compute what the plain ones did."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedunlearn.models import ModelConfig, build_model
from fedunlearn.unlearn.source_free.inference import logits
from fedunlearn.unlearn.source_free.support import blend, blended_teacher, class_support

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


def test_blend_of_stored_logits_is_the_blended_teacher():
    original, reference, x = cnn(0), cnn(1), torch.rand(50, *SHAPE)
    support = torch.tensor([1.0, 0.0, 0.5, 0.25])
    with torch.no_grad():
        from_logits = blend(original(x), reference(x), support, 2.0)
    assert torch.allclose(blended_teacher(original, reference, support, 2.0)(x), from_logits)
