import gzip

import numpy as np
import pytest
import torch

from fedunlearn.data import (BackdoorConfig, DataConfig, ForgetConfig, add_trigger, dirichlet_partition,
                             iid_partition, load_dataset, poison, select_forget, triggered_test)
from fedunlearn.data.idx import read_idx, write_idx
from fedunlearn.errors import DataError


def _write_fashion(folder, n_train=20, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % 10)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arr = np.random.default_rng(1).integers(0, 256, (5, 3, 4)).astype(np.uint8)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, arr)
    assert np.array_equal(read_idx(path), arr)


def test_idx_bad_magic_and_size(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "float").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4)
    with pytest.raises(DataError, match="not supported"):
        read_idx(tmp_path / "float")
    write_idx(tmp_path / "short", np.zeros((4, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "short")
    (tmp_path / "trunc.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00")[:-4])
    with pytest.raises(DataError):
        read_idx(tmp_path / "trunc.gz")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, gz):
    _write_fashion(tmp_path, gz=gz)
    data = load_dataset(DataConfig(name="fashion-mnist", data_dir=str(tmp_path)))
    assert data.train.x.shape == (20, 1, 28, 28) and len(data.test) == 10
    assert 0.0 <= float(data.train.x.min()) and float(data.train.x.max()) <= 1.0
    assert data.train.y.tolist() == [i % 10 for i in range(20)] and data.num_classes == 10


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(name="fashion-mnist", data_dir=str(tmp_path)))


def test_fashion_mnist_mismatched_files(tmp_path):
    _write_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7))
    with pytest.raises(DataError, match="disagree"):
        load_dataset(DataConfig(name="fashion-mnist", data_dir=str(tmp_path)))


def test_digits_and_subsampling_are_seeded():
    full = load_dataset(DataConfig(name="digits"))
    assert full.input_shape == (1, 8, 8) and len(full.train) + len(full.test) == 1797
    a = load_dataset(DataConfig(name="digits", train_size=100, test_size=50), seed=3)
    b = load_dataset(DataConfig(name="digits", train_size=100, test_size=50), seed=3)
    assert len(a.train) == 100 and len(a.test) == 50 and torch.equal(a.train.x, b.train.x)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_torchvision_sets_offline_give_a_clear_error(tmp_path, name):
    with pytest.raises(DataError, match="download = true"):
        load_dataset(DataConfig(name=name, data_dir=str(tmp_path)))


def test_torchvision_mnist_reads_its_own_format(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_fashion(raw, n_train=12, n_test=6, gz=False)
    data = load_dataset(DataConfig(name="mnist", data_dir=str(tmp_path)))
    assert data.train.x.shape == (12, 1, 28, 28) and len(data.test) == 6


def test_unknown_dataset():
    with pytest.raises(Exception, match="unknown data set 'nope'; valid choices"):
        load_dataset(DataConfig(name="nope"))


def test_forget_selection():
    labels = np.arange(100) % 10
    rnd = select_forget(labels, ForgetConfig(kind="random", fraction=0.1), seed=0)
    assert len(rnd) == 10 and len(set(rnd)) == 10
    assert np.array_equal(rnd, select_forget(labels, ForgetConfig(fraction=0.1), seed=0))
    cls = select_forget(labels, ForgetConfig(kind="class", classes=(3, 4)), seed=0)
    assert set(labels[cls]) == {3, 4} and len(cls) == 20
    assert select_forget(labels, ForgetConfig(kind="indices", indices=(5, 1)), 0).tolist() == [1, 5]


@pytest.mark.parametrize("cfg, fragment", [
    (ForgetConfig(kind="indices", indices=(1, 100)), "out of range: the training set has 100 samples"),
    (ForgetConfig(kind="indices", indices=(-1,)), "out of range"),
    (ForgetConfig(kind="indices", indices=(2, 2)), "duplicates"),
    (ForgetConfig(kind="indices"), "needs forget.indices"),
    (ForgetConfig(kind="class", classes=(11,)), "do not occur"),
    (ForgetConfig(kind="class"), "needs forget.classes"),
    (ForgetConfig(kind="random", fraction=0.0), "selects 0 of 100"),
])
def test_forget_selection_errors(cfg, fragment):
    with pytest.raises(DataError, match=fragment):
        select_forget(np.arange(100) % 10, cfg, seed=0)


def test_iid_partition_disjoint_complete_seeded():
    parts = iid_partition(103, 5, seed=1)
    joined = np.concatenate(parts)
    assert len(joined) == 103 and len(np.unique(joined)) == 103
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 5, seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 5, seed=2)))


def test_dirichlet_partition_is_skewed_disjoint_complete():
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(labels, 5, alpha=0.1, seed=0)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(1000))
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert max(shares) > 0.4  # label skew: some client is dominated by one class
    again = dirichlet_partition(labels, 5, alpha=0.1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    with pytest.raises(DataError, match="alpha must be > 0"):
        dirichlet_partition(labels, 5, alpha=0.0, seed=0)
    with pytest.raises(DataError, match="cannot split"):
        iid_partition(3, 5, seed=0)


def test_backdoor_poison_and_trigger():
    x, y = torch.zeros(10, 1, 8, 8), torch.arange(10) % 3 + 1
    cfg = BackdoorConfig(fraction=0.5, target=0, size=2)
    px, py, chosen = poison(x, y, cfg, seed=0)
    assert len(chosen) == 5 and (py[chosen] == 0).all() and (px[chosen][..., -2:, -2:] == 1).all()
    untouched = np.setdiff1d(np.arange(10), chosen)
    assert torch.equal(px[untouched], x[untouched]) and torch.equal(py[untouched], y[untouched])
    tx, ty = triggered_test(x[:4], torch.tensor([0, 1, 2, 0]), cfg)
    assert len(tx) == 2 and (ty == 0).all() and torch.equal(add_trigger(x[:1], cfg)[0], tx[0])
