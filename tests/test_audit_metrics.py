import numpy as np
import pytest
import torch

from fedunlearn.metrics.klom import binned_kl, gaussian_kl, klom, margins
from fedunlearn.metrics.ulira import null_aucs, reference_offsets, scaled_confidence, tpr_at_fpr, ulira


def test_margins_and_scaled_confidence_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    labels = torch.tensor([0, 1])
    assert margins(logits, labels) == pytest.approx([2.0, -3.0])
    p = torch.softmax(logits, 1)
    expected = [float(torch.log(p[0, 0] / (1 - p[0, 0]))), float(torch.log(p[1, 1] / (1 - p[1, 1])))]
    assert scaled_confidence(logits, labels) == pytest.approx(expected, rel=1e-6)
    # Stacked over models: (models, n, k) -> (models, n).
    assert margins(torch.stack([logits, logits]), labels).shape == (2, 2)
    # Stable where p rounds to 1 in float32.
    assert scaled_confidence(torch.tensor([[60.0, 0.0]]), torch.tensor([0]))[0] == pytest.approx(60.0)


def test_gaussian_kl_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (20000, 1))
    b = rng.normal(1.0, 2.0, (20000, 1))
    expected = np.log(2.0) + (1 + 1) / (2 * 4) - 0.5  # KL(N(0,1) || N(1,2))
    assert gaussian_kl(a, b)[0] == pytest.approx(expected, abs=0.02)
    assert gaussian_kl(a, a)[0] == pytest.approx(0.0, abs=1e-12)


def test_klom_identical_vs_shifted_ensembles():
    rng = np.random.default_rng(1)
    centre = rng.normal(0, 3, 500)
    # Histograms need many models per sample; Gaussian fits work with a handful.
    for fit, models in (("gaussian", 8), ("bins", 64)):
        same_a = centre + rng.normal(0, 1, (models, 500))
        same_b = centre + rng.normal(0, 1, (models, 500))
        shifted = centre + 4 + rng.normal(0, 1, (models, 500))
        floor, far = klom(same_a, same_b, fit), klom(shifted, same_b, fit)
        assert far > 3 * floor, (fit, floor, far)
    assert binned_kl(same_a[:, :3], same_a[:, :3]) == pytest.approx(np.zeros(3))
    assert np.isnan(klom(np.full((3, 2), np.nan), same_b[:3, :2]))


def test_ulira_chance_when_indistinguishable_and_near_one_when_separated():
    rng = np.random.default_rng(2)
    centre = rng.normal(0, 3, 400)
    retrained = centre + rng.normal(0, 1, (8, 400))
    same = ulira(centre + rng.normal(0, 1, (8, 400)), retrained)
    assert abs(same.auc - 0.5) < 0.05
    assert same.tpr_at_1pct_fpr < 0.05
    # Members: the per-example pattern differs (half the samples far more confident), as after training on them.
    memorised = centre + 5 * (rng.random(400) < 0.5) + rng.normal(0, 1, (8, 400))
    apart = ulira(memorised, retrained)
    assert apart.auc > 0.7 and apart.tpr_at_1pct_fpr > 0.2
    with pytest.raises(ValueError, match="at least 3"):
        ulira(retrained[:2], retrained[:2])


def test_ulira_calibration_removes_model_wide_offsets():
    rng = np.random.default_rng(3)
    aucs = {True: [], False: []}
    for _ in range(10):
        centre = rng.normal(0, 3, 60)
        # Each model a little more or less confident everywhere: the same law on both sides.
        draw = lambda: centre + 0.3 * rng.normal(0, 1, (8, 60)) + rng.normal(0, 1.5, (8, 1))  # noqa: E731
        a, b = draw(), draw()
        for cal in aucs:
            aucs[cal].append(ulira(a, b, calibrate=cal).auc)
    assert abs(np.mean(aucs[True]) - 0.5) < 0.05
    assert np.std(aucs[True]) < np.std(aucs[False]) / 2
    shifted = centre + 6 + 0.3 * rng.normal(0, 1, (8, 60))
    assert ulira(shifted, b, calibrate=False).auc > 0.95  # a uniform shift is seen only uncalibrated


def test_tpr_at_fpr_reads_the_step_curve():
    fpr = np.array([0.0, 0.005, 0.02, 1.0])
    tpr = np.array([0.1, 0.3, 0.6, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.3
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.1


def test_ulira_offsets_from_held_out_samples_keep_a_shared_forget_set_signal():
    rng = np.random.default_rng(4)
    centre, ref_centre, labels, ref_labels = rng.normal(0, 3, 80), rng.normal(0, 3, 200), np.zeros(80), np.zeros(200)

    def ensemble(shift=0.0):
        # Per model: an offset on everything (the seed), seen on held-out samples as well.
        offset = rng.normal(0, 1.5, (8, 1))
        forget = centre + shift + offset + 0.5 * rng.normal(0, 1, (8, 80))
        held_out = ref_centre + offset + 0.5 * rng.normal(0, 1, (8, 200))
        return forget, reference_offsets(held_out, ref_labels, labels)

    floors, raw = [], []
    for _ in range(12):  # two ensembles of the same law: chance, and steadier than without offsets
        (a, off_a), (b, off_b) = ensemble(), ensemble()
        floors.append(ulira(a, b, offsets=(off_a, off_b)).auc)
        raw.append(ulira(a, b, calibrate=False).auc)
    assert abs(np.mean(floors) - 0.5) < 0.05
    assert np.std(floors) < np.std(raw) / 2
    # A forget set remembered as a whole (every sample more confident, held-out samples not):
    # offsets from the forget set itself erase it, offsets from held-out samples keep it.
    (m, off_m), (r, off_r) = ensemble(shift=1.5), ensemble()
    assert ulira(m, r).auc < 0.65
    assert ulira(m, r, offsets=(off_m, off_r)).auc > 0.9


def test_reference_offsets_are_per_class_means_and_null_aucs_centre_on_chance():
    ref = np.array([[1.0, 3.0, 10.0], [0.0, 2.0, 4.0]])
    off = reference_offsets(ref, [0, 0, 1], [1, 0, 7])  # class 7 is not among the reference samples
    assert off.tolist() == [[10.0, 2.0, 14 / 3], [4.0, 1.0, 2.0]]
    rng = np.random.default_rng(5)
    centre = rng.normal(0, 3, 300)
    aucs = null_aucs(centre + rng.normal(0, 1, (8, 300)), centre + rng.normal(0, 1, (8, 300)), draws=10)
    assert len(aucs) == 10 and abs(aucs.mean() - 0.5) < 0.05
