import math

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.metrics import avg_gap, js_divergence, l2_distance, sample_feature, speedup, svc_mia


def test_js_divergence_known_values():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    assert js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) == pytest.approx(math.log(2), abs=1e-6)
    # JS([1,0], [.5,.5]) = 0.5*ln(2/1.5)... computed by hand: 0.5*(ln(1/0.75)) + 0.5*(0.5 ln(0.5/0.75) + 0.5 ln 2)
    expected = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])) == pytest.approx(expected, abs=1e-6)


def test_l2_distance_of_parameters():
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[0.0, 0.0]])); a.bias.fill_(0.0)
        b.weight.copy_(torch.tensor([[3.0, 0.0]])); b.bias.fill_(4.0)
    assert l2_distance(a, b) == pytest.approx(5.0)
    assert l2_distance(a, a) == 0.0


def test_avg_gap_and_speedup():
    ref = {"test_acc": 0.9, "retain_acc": 0.95, "forget_acc": 0.9, "mia_efficacy": 0.1}
    row = {"test_acc": 0.8, "retain_acc": 0.95, "forget_acc": 1.0, "mia_efficacy": 0.1}
    assert avg_gap(row, ref) == pytest.approx(5.0)  # (10 + 0 + 10 + 0) / 4 points
    assert speedup(10.0, 2.0) == 5.0


def test_sample_features():
    probs = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    assert sample_feature(probs, labels, "confidence").ravel() == pytest.approx([0.7, 0.5])
    assert sample_feature(probs, labels, "loss").ravel() == pytest.approx([-math.log(0.7), math.log(2)])
    assert sample_feature(probs, labels, "entropy")[1, 0] == pytest.approx(math.log(2))


def test_svc_mia_separates_members_from_nonmembers():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.95, 1.0, (300, 1))
    nonmembers = rng.uniform(0.2, 0.7, (400, 1))
    # Forget set that looks like members: attack calls them members, AUC near 1.
    seen = svc_mia(members, nonmembers, rng.uniform(0.95, 1.0, (100, 1)))
    assert seen.efficacy < 0.05 and seen.auc > 0.95
    # Forget set that looks like test data: called non-members, AUC near 0.5.
    unseen = svc_mia(members, nonmembers, rng.uniform(0.2, 0.7, (100, 1)))
    assert unseen.efficacy > 0.95 and abs(unseen.auc - 0.5) < 0.1


def test_mia_of_a_diverged_model_is_nan_not_a_crash():
    ok = np.random.default_rng(0).random((50, 1))
    broken = ok.copy()
    broken[3] = np.nan
    result = svc_mia(ok, ok, broken)
    assert np.isnan(result.efficacy) and np.isnan(result.auc)
