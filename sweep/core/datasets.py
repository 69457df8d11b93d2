"""The dataset registry: every dataset becomes in-memory tensors split into train/val/test.

Data this small lives on the training device and is batched by indexing, so no DataLoader worker
processes are needed. ``load_dataset`` returns NumPy arrays (cheap to put in Ray's object store
once per node and read zero-copy by every worker); ``DataSplits.to_torch`` moves them to a device.
``load_data(cfg)`` is the one place a config's keys become ``load_dataset``'s arguments.

Fashion-MNIST is read from its IDX files with NumPy, from ``data_dir`` or from Debian's
``dataset-fashion-mnist`` package, so a machine without a network (a cluster node, CI) has it;
torchvision is used only to download it.
"""

from __future__ import annotations

import gzip
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from sweep.core.errors import BadSplit, DatasetUnavailable

# Where Debian's dataset-fashion-mnist package installs the four gzipped IDX files (read at each
# load, so tests can point it elsewhere).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
# split -> IDX file stem; each file may be gzipped (.gz) or plain
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


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
    # names this object's arrays (new on every construction, dataclasses.replace included; kept by
    # pickling, so a Ray worker sees the driver's): a worker keeps one device copy per token
    token: str = field(default_factory=lambda: uuid.uuid4().hex, init=False, compare=False, repr=False)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def to_torch(self, device):
        import torch

        def move(a, dtype):
            return torch.from_numpy(np.array(a, copy=True)).to(device=device, dtype=dtype)

        return {
            name: move(getattr(self, name), torch.float32 if name.endswith("_x") else torch.long)
            for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }


_ON_DEVICE: dict[tuple[str, str], dict] = {}  # (token, device) -> tensors; at most one entry


def device_tensors(data: DataSplits, device) -> dict:
    """The splits as tensors on ``device``, made once per worker process and data: a sweep's
    trials in one worker (Ray reuses it) share the copy instead of paying a host copy and a
    transfer each (600 MB for CIFAR-10). Training never writes to them. Only the latest data is
    kept, so memory does not grow across sweeps or datasets."""
    key = (data.token, str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE.clear()  # drop the old copy first: two need not fit at once
        _ON_DEVICE[key] = data.to_torch(device)
    return _ON_DEVICE[key]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    # (train_x NCHW float32 or uint8, train_y, test_x, test_y); no test set: None, None
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
            how = (
                "the download failed (no network?)"
                if download
                else "set download=true on a machine with network access"
            )
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


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (``ndim`` 1: labels, 3: images), gzipped or not. Anything
    else, a bad magic number, a size that disagrees with the header, or an unreadable file raises
    DatasetUnavailable naming the file: a half-downloaded file must not train silently."""

    def bad(why: str) -> DatasetUnavailable:
        return DatasetUnavailable(f"{path}: {why}; replace it with a good copy")

    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise bad(f"cannot be read ({type(exc).__name__}: {exc})") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != 0x0800 + ndim:  # two zero bytes, 0x08 (unsigned byte), the number of dimensions
        raise bad(
            f"not an IDX file of {ndim}-dimensional unsigned bytes (magic number "
            f"{'missing' if magic is None else hex(magic)}, expected {hex(0x0800 + ndim)})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad("its IDX header is cut short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise bad(f"holds {len(raw) - header} bytes of data, its header says {shape} ({int(np.prod(shape))})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_folders(data_dir: Path) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: data_dir as torchvision lays it out, data_dir
    itself, then the Debian package's folder."""
    return [data_dir / "FashionMNIST" / "raw", data_dir, FASHION_MNIST_SYSTEM_DIR]


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (each gzipped or plain), or None if any is missing."""
    found = {}
    for split, stem in FASHION_MNIST_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found[split] = next((c for c in candidates if c.is_file()), None)
        if found[split] is None:
            return None
    return found


def _fashion_mnist(data_dir: Path, download: bool):
    files = next((f for f in map(_idx_files, _idx_folders(data_dir)) if f is not None), None)
    if files is None and download:
        files = _download_fashion_mnist(data_dir)
    if files is None:
        places = ", ".join(str(p) for p in _idx_folders(data_dir))
        raise DatasetUnavailable(
            f"fashion_mnist: no Fashion-MNIST files ({', '.join(FASHION_MNIST_FILES.values())}, "
            f"gzipped or not) in {places}; install them with `apt-get install {FASHION_MNIST_PACKAGE}`, "
            "set download=true on a machine with network access, or copy them there (data_dir=... to look elsewhere)"
        )
    arrays = {split: read_idx(path, 3 if split.endswith("_x") else 1) for split, path in files.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if len(x) != len(y):
            raise DatasetUnavailable(
                f"{files[f'{part}_y']}: {len(y)} labels for {len(x)} images in "
                f"{files[f'{part}_x']}; the files do not belong together"
            )
        if x.shape[1:] != (28, 28):
            raise DatasetUnavailable(
                f"{files[f'{part}_x']}: images of {x.shape[1]}x{x.shape[2]}, not Fashion-MNIST's 28x28"
            )
        if len(y) and y.max() > 9:
            raise DatasetUnavailable(f"{files[f'{part}_y']}: a label {y.max()}, not Fashion-MNIST's 0..9")
    # NCHW uint8: load_dataset reads them as value / 255 (as torchvision's path gives) when it normalizes
    return (
        arrays["train_x"][:, None],
        arrays["train_y"].astype(np.int64),
        arrays["test_x"][:, None],
        arrays["test_y"].astype(np.int64),
    )


def _download_fashion_mnist(data_dir: Path) -> dict[str, Path]:
    """torchvision's download into ``data_dir/FashionMNIST/raw``; its checksums guard the files."""
    import torchvision.datasets as tvd

    try:
        for train in (True, False):
            tvd.FashionMNIST(str(data_dir), train=train, download=True)
    except (RuntimeError, OSError) as exc:
        raise DatasetUnavailable(
            f"fashion_mnist: the download into {data_dir / 'FashionMNIST' / 'raw'} failed "
            f"(no network?) [{type(exc).__name__}]; install the files with "
            f"`apt-get install {FASHION_MNIST_PACKAGE}` instead"
        ) from None
    files = _idx_files(data_dir / "FashionMNIST" / "raw")
    if files is None:
        raise DatasetUnavailable(
            f"fashion_mnist: the download left no IDX files in {data_dir / 'FashionMNIST' / 'raw'}"
        )
    return files


def _synthetic(data_dir: Path, download: bool, n: int = 2048, shape=(3, 32, 32), classes: int = 10):
    """Random images whose labels come from a fixed random projection: learnable, for benchmarks."""
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    projection = rng.standard_normal((int(np.prod(shape)), classes), dtype=np.float32)
    y = (x.reshape(n, -1) @ projection).argmax(1).astype(np.int64)
    return x, y, None, None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("digits", _digits, 10, False, "scikit-learn's bundled 8x8 digits (1,797 images, no download)"),
        DatasetSpec("mnist", _torchvision("MNIST", "MNIST"), 10, False, "MNIST 28x28 grey (torchvision)"),
        DatasetSpec(
            "fashion_mnist",
            _fashion_mnist,
            10,
            False,
            f"Fashion-MNIST 28x28 grey (data_dir, then Debian's {FASHION_MNIST_PACKAGE}; download=true: torchvision)",
        ),
        DatasetSpec(
            "cifar10",
            _torchvision("CIFAR10", "cifar-10-batches-py"),
            10,
            True,
            "CIFAR-10 32x32 colour (torchvision), random crop + flip augmentation",
        ),
        DatasetSpec("synthetic", _synthetic, 10, False, "random 3x32x32 tensors with learnable labels (benchmarks)"),
    ]
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; choose from: {', '.join(sorted(DATASETS))}") from None


def load_dataset(
    name: str,
    data_dir: str | Path = "./data",
    download: bool = False,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    augment: bool | None = None,
    train_subset: int | None = None,
) -> DataSplits:
    """Seeded split, normalized with the training part's per-channel mean and std.

    Datasets without an official test set (digits, synthetic) hold out ``test_fraction`` first;
    the validation split is always ``val_fraction`` of what remains for training.
    ``train_subset`` keeps the first N images of the shuffled training part (all if it has
    fewer); the validation and test sets, and the normalization (from the whole training part),
    are the same as without it, so runs with different subsets are measured alike.
    Images may come as float32 or as uint8 (read as value / 255).
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
        raise BadSplit(
            f"{val_fraction:g} of {len(x)} training images leaves "
            f"{'no validation' if n_val == 0 else 'no training'} images"
        )
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_x = x[train_idx]
    norm = _byte_normalizer(train_x) if train_x.dtype == np.uint8 else _float_normalizer(train_x)
    if train_subset is not None:
        train_idx, train_x = train_idx[:train_subset], train_x[:train_subset]
    return DataSplits(
        norm(train_x),
        y[train_idx],
        norm(x[val_idx]),
        y[val_idx],
        norm(test_x),
        test_y,
        spec.num_classes,
        spec.augment if augment is None else augment,
    )


def _float_normalizer(train_x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    mean = train_x.mean(axis=(0, 2, 3), keepdims=True)
    std = train_x.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def norm(a):
        return ((a - mean) / std).astype(np.float32)

    return norm


def _byte_normalizer(train_x: np.ndarray, chunk: int = 4096) -> Callable[[np.ndarray], np.ndarray]:
    """For uint8 images read as value / 255: the statistics come exactly from a histogram per
    channel, and normalizing is one multiply-add into float32: Fashion-MNIST loads in about
    0.5 s, where float arithmetic on the whole array took 1.8 s."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(train_x.shape[1]):
        counts = np.zeros(256, dtype=np.int64)
        for start in range(0, len(train_x), chunk):  # bincount casts to intp: chunks keep that small
            counts += np.bincount(train_x[start : start + chunk, c].ravel(), minlength=256)
        m = counts @ levels / counts.sum()
        mean.append(m)
        std.append(np.sqrt(counts @ (levels - m) ** 2 / counts.sum()) + 1e-6)
    scale = (1.0 / 255.0 / np.array(std)).astype(np.float32).reshape(1, -1, 1, 1)
    shift = (-np.array(mean) / np.array(std)).astype(np.float32).reshape(1, -1, 1, 1)

    def norm(a):
        out = np.empty(a.shape, dtype=np.float32)
        np.multiply(a, scale, out=out)
        out += shift
        return out

    return norm


class DataKeys(Protocol):
    """The config keys that say which data a run trains on (SweepConfig and TrialConfig have them)."""

    dataset: str
    data_dir: str
    download: bool
    val_fraction: float
    seed: int
    train_subset: int | None


def load_data(cfg: DataKeys) -> DataSplits:
    """The data a config describes: every caller (a sweep's driver, `sweep train`, a trial given
    no data) loads through here, so a data key reaches all of them."""
    return load_dataset(
        cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, seed=cfg.seed, train_subset=cfg.train_subset
    )
