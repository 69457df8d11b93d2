"""The dataset registry: every dataset becomes in-memory tensors split into train/val/test.

Data this small lives on the training device and is batched by indexing, so no DataLoader worker
processes are needed. ``load_dataset`` returns NumPy arrays (cheap to put in Ray's object store
once per node and read zero-copy by every worker); ``DataSplits.to_torch`` moves them to a device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


class DatasetUnavailable(RuntimeError):
    """The files are missing and could not be fetched; the message says where and how to fix it."""

    key = "dataset"  # the config key to change


class BadSplit(DatasetUnavailable):
    """The split leaves a part empty."""

    key = "val_fraction"


@dataclass
class DataSplits:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    augment: bool = False  # random crop + flip (CIFAR)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def to_torch(self, device):
        import torch

        def move(a, dtype):
            return torch.from_numpy(np.array(a, copy=True)).to(device=device, dtype=dtype)

        return {name: move(getattr(self, name), torch.float32 if name.endswith("_x") else torch.long)
                for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[Path, bool], tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]
    num_classes: int
    augment: bool
    description: str


def _digits(data_dir: Path, download: bool):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64), None, None


def _torchvision(dataset_class_name: str, folder: str):
    def load(data_dir: Path, download: bool):
        import torchvision.datasets as tvd

        cls = getattr(tvd, dataset_class_name)
        try:
            train = cls(str(data_dir), train=True, download=download)
            test = cls(str(data_dir), train=False, download=download)
        except (RuntimeError, OSError) as exc:
            how = ("the download failed (no network?)" if download
                   else "set download=true on a machine with network access")
            raise DatasetUnavailable(
                f"{dataset_class_name}: no data under {data_dir / folder}; {how}, "
                f"or copy the dataset files there (data_dir=... to look elsewhere) [{type(exc).__name__}]"
            ) from None

        def arrays(ds):
            x = np.asarray(ds.data)
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # NCHW
            return x.astype(np.float32) / 255.0, np.asarray(ds.targets, dtype=np.int64)

        return (*arrays(train), *arrays(test))
    return load


def _synthetic(data_dir: Path, download: bool, n: int = 2048, shape=(3, 32, 32), classes: int = 10):
    """Random images whose labels come from a fixed random projection: learnable, for benchmarks."""
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    projection = rng.standard_normal((int(np.prod(shape)), classes), dtype=np.float32)
    y = (x.reshape(n, -1) @ projection).argmax(1).astype(np.int64)
    return x, y, None, None


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in [
    DatasetSpec("digits", _digits, 10, False, "scikit-learn's bundled 8x8 digits (1,797 images, no download)"),
    DatasetSpec("mnist", _torchvision("MNIST", "MNIST"), 10, False, "MNIST 28x28 grey (torchvision)"),
    DatasetSpec("fashion_mnist", _torchvision("FashionMNIST", "FashionMNIST"), 10, False,
                "Fashion-MNIST 28x28 grey (torchvision)"),
    DatasetSpec("cifar10", _torchvision("CIFAR10", "cifar-10-batches-py"), 10, True,
                "CIFAR-10 32x32 colour (torchvision), random crop + flip augmentation"),
    DatasetSpec("synthetic", _synthetic, 10, False, "random 3x32x32 tensors with learnable labels (benchmarks)"),
]}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; choose from: {', '.join(sorted(DATASETS))}") from None


def load_dataset(name: str, data_dir: str | Path = "./data", download: bool = False,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                 augment: bool | None = None) -> DataSplits:
    """Seeded split, normalized with the training split's per-channel mean and std.

    Datasets without an official test set (digits, synthetic) hold out ``test_fraction`` first;
    the validation split is always ``val_fraction`` of what remains for training.
    """
    spec = get_dataset(name)
    x, y, test_x, test_y = spec.load(Path(data_dir), download)
    rng = np.random.default_rng(seed)
    if test_x is None:
        order = rng.permutation(len(x))
        n_test = int(round(test_fraction * len(x)))
        test_x, test_y, x, y = x[order[:n_test]], y[order[:n_test]], x[order[n_test:]], y[order[n_test:]]
    order = rng.permutation(len(x))
    n_val = int(round(val_fraction * len(x)))
    if not 0 < n_val < len(x):
        raise BadSplit(f"{val_fraction:g} of {len(x)} training images leaves "
                       f"{'no validation' if n_val == 0 else 'no training'} images")
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_x = x[train_idx]
    mean = train_x.mean(axis=(0, 2, 3), keepdims=True)
    std = train_x.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def norm(a):
        return ((a - mean) / std).astype(np.float32)

    return DataSplits(norm(train_x), y[train_idx], norm(x[val_idx]), y[val_idx], norm(test_x), test_y,
                      spec.num_classes, spec.augment if augment is None else augment)
