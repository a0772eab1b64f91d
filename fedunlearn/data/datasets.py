"""Data sets by name, held in memory as float tensors in [0, 1] shaped (N, C, H, W).

`fashion-mnist` reads the IDX files that Debian's `dataset-fashion-mnist` package installs (or
any folder given as data.data_dir); `digits` is scikit-learn's embedded 8x8 digits and needs
nothing at all; `mnist`, `cifar10` and `svhn` go through torchvision and download only when
data.download = true.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedunlearn.config import check_range
from fedunlearn.data.idx import read_idx
from fedunlearn.errors import DataError
from fedunlearn.registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_CACHE = Path.home() / ".cache" / "fedunlearn"


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion-mnist"
    data_dir: str = ""        # where the files are; empty = the data set's usual place
    download: bool = False    # torchvision data sets only: allow a download
    train_size: int = 0       # seeded subsample of the training set for fast runs; 0 = all
    test_size: int = 0        # same for the test set
    val_size: int = 0         # validation split carved (seeded) from the training set, for any tuning; 0 = none

    def __post_init__(self):
        DATASETS.check(self.name)  # an unknown data set fails when the config is built
        check_range("data.train_size", self.train_size, 0)
        check_range("data.test_size", self.test_size, 0)
        check_range("data.val_size", self.val_size, 0)


class ArrayDataset(torch.utils.data.Dataset):
    """Tensors in memory; `subset` keeps indices relative to this data set."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise DataError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y = x, y.long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def subset(self, idx) -> "ArrayDataset":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return ArrayDataset(self.x[idx], self.y[idx])

    @staticmethod
    def concat(*parts: "ArrayDataset") -> "ArrayDataset":
        return ArrayDataset(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


@dataclass
class DataBundle:
    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    val: ArrayDataset | None = None  # carved from the training data; never trained on

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def load_fashion_mnist(cfg: DataConfig) -> DataBundle:
    root = Path(cfg.data_dir) if cfg.data_dir else DEBIAN_FASHION_MNIST

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
        raise DataError(
            f"Fashion-MNIST file '{stem}[.gz]' not found in '{root}'. Install it with "
            "`sudo apt-get update && sudo apt-get install dataset-fashion-mnist`, or, without apt, "
            "download the four IDX files from https://github.com/zalandoresearch/fashion-mnist "
            "into a folder and set data.data_dir to it (or use data.name = 'digits', which needs no files)."
        )

    def split(prefix: str, count: int) -> ArrayDataset:
        images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {prefix} files disagree: images {images.shape}, labels {labels.shape}")
        if count and len(images) != count:
            raise DataError(f"Fashion-MNIST {prefix} set has {len(images)} images, expected {count}")
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        return ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)))

    # Sizes are checked only for the real files; tests write smaller files in the same format.
    official = root == DEBIAN_FASHION_MNIST
    return DataBundle("fashion-mnist", split("train", 60000 if official else 0),
                      split("t10k", 10000 if official else 0), 10)


def load_digits(cfg: DataConfig) -> DataBundle:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    # A fixed split (seed 0) so that "the test set" means the same thing in every run.
    perm = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    full = ArrayDataset(x, y)
    return DataBundle("digits", full.subset(perm[:cut]), full.subset(perm[cut:]), 10)


def _torchvision(name: str) -> Callable[[DataConfig], DataBundle]:
    def load(cfg: DataConfig) -> DataBundle:
        import torchvision

        root = Path(cfg.data_dir) if cfg.data_dir else DEFAULT_CACHE / name
        try:
            if name == "svhn":
                train = torchvision.datasets.SVHN(str(root), split="train", download=cfg.download)
                test = torchvision.datasets.SVHN(str(root), split="test", download=cfg.download)
                to_xy = lambda d: (d.data.astype(np.float32) / 255.0, np.asarray(d.labels))  # noqa: E731
            else:
                cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]
                train = cls(str(root), train=True, download=cfg.download)
                test = cls(str(root), train=False, download=cfg.download)
                to_xy = lambda d: (_nchw(np.asarray(d.data)), np.asarray(d.targets))  # noqa: E731
        except RuntimeError as err:
            hint = ("set data.download = true (needs internet)" if not cfg.download
                    else "this machine could not download it; copy the files there or set data.data_dir")
            raise DataError(f"data set '{name}' not found under '{root}': {err}. To fix: {hint}.") from None
        except OSError as err:
            raise DataError(f"could not download '{name}' into '{root}' ({err}); without internet, "
                            "copy the files there or use 'fashion-mnist' or 'digits'") from None

        def bundle(d):
            x, y = to_xy(d)
            return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))

        return DataBundle(name, bundle(train), bundle(test), 10)

    return load


def _nchw(images: np.ndarray) -> np.ndarray:
    images = images.astype(np.float32) / 255.0
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


load_mnist, load_cifar10, load_svhn = _torchvision("mnist"), _torchvision("cifar10"), _torchvision("svhn")

# name -> "module:loader", loader(DataConfig) -> DataBundle (the full data set; load_dataset subsamples).
DATASETS = Registry("data set", {
    "fashion-mnist": "fedunlearn.data.datasets:load_fashion_mnist",
    "digits": "fedunlearn.data.datasets:load_digits",
    "mnist": "fedunlearn.data.datasets:load_mnist",
    "cifar10": "fedunlearn.data.datasets:load_cifar10",
    "svhn": "fedunlearn.data.datasets:load_svhn",
})


def load_dataset(cfg: DataConfig, seed: int = 0) -> DataBundle:
    data = DATASETS.get(cfg.name)(cfg)
    rng = np.random.default_rng(seed)
    for attr, size in (("train", cfg.train_size), ("test", cfg.test_size)):
        part = getattr(data, attr)
        if size and size < len(part):
            setattr(data, attr, part.subset(np.sort(rng.choice(len(part), size=size, replace=False))))
    if cfg.val_size:
        n = len(data.train)
        if cfg.val_size >= n:
            raise DataError(f"data.val_size = {cfg.val_size} leaves nothing to train on: the training set has {n} samples")
        # Its own generator: adding a validation split must not change which samples train_size picks.
        pick = np.random.default_rng([seed, 1]).permutation(n)
        data.val = data.train.subset(np.sort(pick[:cfg.val_size]))
        data.train = data.train.subset(np.sort(pick[cfg.val_size:]))
    return data
