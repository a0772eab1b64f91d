"""Model-based forget sets (subpopulation, atypical) and the validation split, on digits."""

import numpy as np
import pytest
import torch

from fedunlearn.config import build
from fedunlearn.data import DataConfig, ForgetConfig, load_dataset, select_forget
from fedunlearn.data.forget_model import penultimate_features, select_forget_for, true_class_confidence
from fedunlearn.errors import ConfigError, DataError
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, seed_everything, train


@pytest.fixture(scope="module")
def digits():
    data = load_dataset(DataConfig(name="digits", val_size=200), 0)
    models = []
    for seed in (0, 1):
        seed_everything(seed)
        model = build_model(ModelConfig(name="mlp", hidden=32), data.input_shape, 10)
        models.append(train(model, data.train, TrainConfig(epochs=5, batch_size=64), "cpu", seed=seed, progress=False))
    return data, models


def test_validation_split_is_carved_from_training_data(digits):
    data, _ = digits
    full = load_dataset(DataConfig(name="digits"), 0)
    assert len(data.val) == 200 and len(data.train) == len(full.train) - 200
    rows = lambda d: {tuple(r) for r in d.x.flatten(1).tolist()}  # noqa: E731
    assert not rows(data.val) & rows(data.train)
    assert rows(data.val) <= rows(full.train) and not rows(data.val) & rows(full.test)
    same = load_dataset(DataConfig(name="digits", val_size=200), 0)
    assert torch.equal(same.val.x, data.val.x)  # seeded
    assert load_dataset(DataConfig(name="digits"), 0).val is None
    with pytest.raises(DataError, match="val_size"):
        load_dataset(DataConfig(name="digits", val_size=5000), 0)


def test_subpopulation_is_one_seeded_cluster_of_one_class(digits):
    data, models = digits
    cfg = ForgetConfig(kind="subpopulation", classes=(4,), clusters=4)
    idx = select_forget_for(data.train, cfg, 0, lambda: models, "cpu")
    labels = data.train.y.numpy()
    assert 0 < len(idx) < (labels == 4).sum() and set(labels[idx]) == {4}
    assert np.array_equal(idx, select_forget_for(data.train, cfg, 0, lambda: models, "cpu"))
    # The cluster is compact in feature space: closer to its own centre than the rest of the class is.
    feats = penultimate_features(models[0], data.train.x, "cpu")
    rest = np.setdiff1d(np.flatnonzero(labels == 4), idx)
    centre = feats[idx].mean(0)
    assert np.linalg.norm(feats[idx] - centre, axis=1).mean() < np.linalg.norm(feats[rest] - centre, axis=1).mean()
    picks = [select_forget_for(data.train, ForgetConfig(kind="subpopulation", classes=(4,), clusters=4, cluster=c),
                               0, lambda: models, "cpu") for c in range(4)]
    assert sum(len(p) for p in picks) == (labels == 4).sum()  # the clusters partition the class


def test_atypical_are_the_least_confident(digits):
    data, models = digits
    cfg = ForgetConfig(kind="atypical", fraction=0.05)
    idx = select_forget_for(data.train, cfg, 0, lambda: models, "cpu")
    assert len(idx) == round(0.05 * len(data.train))
    conf = true_class_confidence(models, data.train, "cpu")
    assert conf[idx].max() <= np.delete(conf, idx).min()


def test_model_based_kinds_need_a_model_and_valid_settings(digits):
    data, _ = digits
    with pytest.raises(DataError, match="trained model"):
        select_forget(data.train.y.numpy(), ForgetConfig(kind="atypical"), 0)
    with pytest.raises(ConfigError, match="forget.cluster"):
        build(ForgetConfig, {"kind": "subpopulation", "clusters": 3, "cluster": 5}, "forget")
    # Only random / class / indices never train anything.
    called = []
    select_forget_for(data.train, ForgetConfig(kind="random"), 0, lambda: called.append(1) or [], "cpu")
    assert not called


def test_subpopulation_size_is_the_samples_nearest_the_cluster_centre(digits):
    data, models = digits
    labels = data.train.y.numpy()
    cluster = select_forget_for(data.train, ForgetConfig(kind="subpopulation", classes=(4,), clusters=4, cluster=1),
                                0, lambda: models, "cpu")
    size = len(cluster) + 20
    idx = select_forget_for(data.train, ForgetConfig(kind="subpopulation", classes=(4,), clusters=4, cluster=1, size=size),
                            0, lambda: models, "cpu")
    assert len(idx) == size and set(labels[idx]) == {4}
    # A ball around the same centre: it holds most of the cluster, and nothing of the class is
    # nearer the centre than its farthest member.
    assert len(np.intersect1d(idx, cluster)) > 0.8 * len(cluster)
    feats = penultimate_features(models[0], data.train.x, "cpu")
    centre = feats[cluster].mean(0)  # k-means' centre of that cluster
    dist = np.linalg.norm(feats - centre, axis=1)
    rest = np.setdiff1d(np.flatnonzero(labels == 4), idx)
    assert dist[idx].max() <= dist[rest].min() + 1e-6
    with pytest.raises(DataError, match="forget.size"):
        select_forget_for(data.train, ForgetConfig(kind="subpopulation", classes=(4,), size=int((labels == 4).sum())),
                          0, lambda: models, "cpu")
