"""Fashion-MNIST from its IDX files (data_dir, then Debian's package), ``train_subset``, and the
searched batch size (``batch_sizes``): config checks and what a sampled trial gets."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from sweep.core import datasets
from sweep.core.config import TrialConfig, load_config
from sweep.core.datasets import FASHION_MNIST_FILES, load_data, load_dataset
from sweep.core.errors import ConfigError, DatasetUnavailable
from sweep.execution.search import chosen_hyperparameters, run_params, sample_trial
from sweep.train.solo import run_trial


def write_idx(path: Path, array: np.ndarray) -> Path:
    """``array`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)
    return path


def write_fashion(folder: Path, n_train: int, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict[str, Path]:
    """A tiny stand-in with Fashion-MNIST's file names and format: ``n_train`` + ``n_test`` images."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28)),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28)),
        "test_y": np.arange(n_test) % 10,
    }
    return {
        split: write_idx(folder / (stem + (".gz" if gz else "")), arrays[split].astype(np.uint8))
        for split, stem in FASHION_MNIST_FILES.items()
    }


@pytest.fixture
def system_dir(tmp_path, monkeypatch) -> Path:
    """The Debian package's folder, pointed at an empty temporary folder."""
    folder = tmp_path / "system"
    folder.mkdir()
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", folder)
    return folder


def sizes(data) -> tuple[int, int, int]:
    return len(data.train_x), len(data.val_x), len(data.test_x)


# ---- the real files, from Debian's dataset-fashion-mnist ----------------------------------------


@pytest.mark.slow  # decodes 70,000 images: about 2 s
@pytest.mark.fashion_mnist
def test_fashion_mnist_loads_from_the_debian_package(tmp_path):
    started = time.perf_counter()
    data = load_dataset("fashion_mnist", data_dir=tmp_path, val_fraction=0.2)
    seconds = time.perf_counter() - started
    assert sizes(data) == (48_000, 12_000, 10_000)
    assert data.in_shape == (1, 28, 28) and data.num_classes == 10 and not data.augment
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert set(np.unique(y)) == set(range(10)), split
    assert np.array_equal(np.bincount(data.test_y), [1000] * 10)  # the official test set: 1,000 per class
    assert abs(float(data.train_x.mean())) < 1e-3 and abs(float(data.train_x.std()) - 1) < 1e-3
    assert abs(float(data.test_x.mean())) < 0.05  # same statistics, other images
    assert list(tmp_path.iterdir()) == []  # read in place: nothing copied or downloaded into data_dir
    assert seconds < 2, f"loading Fashion-MNIST took {seconds:.2f} s"


# ---- where the files are looked for --------------------------------------------------------------


@pytest.mark.parametrize("layout", ["FashionMNIST/raw", ".", "plain"])
def test_a_copy_in_data_dir_comes_before_the_system_one(layout, tmp_path, system_dir):
    write_fashion(system_dir, n_train=100)
    data_dir = tmp_path / "data"
    write_fashion(data_dir / layout if layout != "plain" else data_dir, n_train=50, gz=layout != "plain")
    assert sizes(load_dataset("fashion_mnist", data_dir=data_dir, val_fraction=0.2)) == (40, 10, 20)
    assert sizes(load_dataset("fashion_mnist", data_dir=tmp_path / "empty", val_fraction=0.2)) == (80, 20, 20)


def test_torchvision_layout_comes_before_plain_files_in_data_dir(tmp_path, system_dir):
    write_fashion(tmp_path, n_train=30)
    write_fashion(tmp_path / "FashionMNIST" / "raw", n_train=60)
    assert sizes(load_dataset("fashion_mnist", data_dir=tmp_path, val_fraction=0.5)) == (30, 30, 20)


def test_images_and_labels_are_read_as_written(tmp_path, system_dir):
    files = write_fashion(tmp_path, n_train=10, n_test=10)
    train_x, train_y, test_x, test_y = datasets.DATASETS["fashion_mnist"].load(tmp_path, False)
    with gzip.open(files["test_x"]) as f:
        written = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10, 1, 28, 28)
    assert np.array_equal(test_x, written) and list(test_y) == list(range(10))
    assert train_x.shape == (10, 1, 28, 28) and train_y.dtype == np.int64


def test_missing_everywhere_is_one_line_naming_both_places(tmp_path, system_dir):
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("fashion_mnist", data_dir=data_dir)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    for needed in (
        str(data_dir),
        str(data_dir / "FashionMNIST" / "raw"),
        str(system_dir),
        "download=true",
        "apt-get install dataset-fashion-mnist",
        "train-images-idx3-ubyte",
    ):
        assert needed in message, f"{needed!r} not in: {message}"
    assert info.value.key == "dataset"
    assert not data_dir.exists()  # nothing made


def test_an_incomplete_copy_is_passed_over(tmp_path, system_dir):
    files = write_fashion(tmp_path, n_train=30)
    files["test_y"].unlink()
    write_fashion(system_dir, n_train=100)
    assert sizes(load_dataset("fashion_mnist", data_dir=tmp_path, val_fraction=0.2)) == (80, 20, 20)


def _corrupt(files: dict[str, Path], how: str) -> Path:
    if how == "bad_magic":
        write_idx(files["train_x"], np.zeros((5, 28), np.uint8))  # 2-D where images are 3-D
        return files["train_x"]
    if how == "truncated":
        raw = gzip.decompress(files["test_x"].read_bytes())
        files["test_x"].write_bytes(gzip.compress(raw[:-100]))
        return files["test_x"]
    if how == "not_gzip":
        files["train_y"].write_bytes(b"<html>404 Not Found</html>")
        return files["train_y"]
    if how == "cut_gzip":
        files["train_x"].write_bytes(files["train_x"].read_bytes()[:500])
        return files["train_x"]
    if how == "empty":
        files["test_y"].write_bytes(gzip.compress(b""))
        return files["test_y"]
    if how == "label_count":
        write_idx(files["train_y"], np.zeros(7, np.uint8))
        return files["train_y"]
    if how == "wrong_size":
        write_idx(files["test_x"], np.zeros((20, 32, 32), np.uint8))
        return files["test_x"]
    if how == "label_value":
        write_idx(files["test_y"], np.full(20, 10, np.uint8))
        return files["test_y"]
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["bad_magic", "truncated", "not_gzip", "cut_gzip", "empty", "label_count", "wrong_size", "label_value"]
)
def test_a_corrupt_file_is_one_line_naming_it(how, tmp_path, system_dir):
    write_fashion(system_dir, n_train=100)  # a good copy elsewhere must not hide the broken one
    bad = _corrupt(write_fashion(tmp_path, n_train=30), how)
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(bad) in message, message


# ---- train_subset ---------------------------------------------------------------------------------


def test_train_subset_caps_only_the_training_images(digits):
    small = load_dataset("digits", train_subset=100)
    assert len(small.train_x) == len(small.train_y) == 100 < len(digits.train_x)
    assert np.array_equal(small.train_x, digits.train_x[:100]) and np.array_equal(small.train_y, digits.train_y[:100])
    for name in ("val_x", "val_y", "test_x", "test_y"):
        assert np.array_equal(getattr(small, name), getattr(digits, name)), name
    everything = load_dataset("digits", train_subset=10**6)  # more than there are: all of them
    assert np.array_equal(everything.train_x, digits.train_x)


def test_train_subset_of_byte_images_keeps_validation_and_test(tmp_path, system_dir):
    write_fashion(tmp_path, n_train=100)
    full = load_dataset("fashion_mnist", data_dir=tmp_path)
    small = load_dataset("fashion_mnist", data_dir=tmp_path, train_subset=10)
    assert sizes(small) == (10, 20, 20)
    assert np.array_equal(small.train_x, full.train_x[:10])
    assert np.array_equal(small.val_x, full.val_x) and np.array_equal(small.test_x, full.test_x)


def test_load_data_takes_train_subset_from_a_config():
    sweep_cfg = load_config("quickstart", ["train_subset=50"], mode="sweep")
    assert len(load_data(sweep_cfg).train_x) == 50
    assert len(load_data(sweep_cfg.trial_config()).train_x) == 50
    assert len(load_data(load_config("train", ["train_subset=null"])).train_x) > 50


def test_a_trial_loading_its_own_data_uses_train_subset():
    result = run_trial(TrialConfig(epochs=1, batch_size=32, train_subset=64), None)
    assert result.status == "ok", result.reason
    epoch = result.history[0]
    assert round(epoch.images_per_second * epoch.epoch_seconds) == 64  # images trained on per epoch


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "true", "abc", "[10]"])
def test_train_subset_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError) as info:
        load_config("train", [f"train_subset={value}"])
    message = str(info.value)
    assert message.startswith("train_subset: must be an integer >= 1") and "null" in message, message


def test_train_subset_is_frozen_on_resume():
    from sweep.core.config import FROZEN_KEYS

    assert "train_subset" in FROZEN_KEYS and "batch_sizes" in FROZEN_KEYS


# ---- batch_sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, says",
    [
        ("64", "must be a list of distinct integers in [1, 65536]"),
        ("[0,32]", "must hold integers in [1, 65536], got 0"),
        ("[32,65537]", "must hold integers in [1, 65536], got 65537"),
        ("[32,1.5]", "got 1.5"),
        ("[true]", "got True"),
        ("[a]", "got 'a'"),
        ("[32,64,32]", "lists a batch size twice: [32, 64, 32]"),
    ],
)
def test_batch_sizes_are_checked(value, says):
    with pytest.raises(ConfigError) as info:
        load_config("quickstart", [f"batch_sizes={value}"], mode="sweep")
    message = str(info.value)
    assert message.startswith("batch_sizes: ") and says in message, message


@pytest.mark.parametrize("value, kept", [("[128,32]", (128, 32)), ("[64]", (64,)), ("[]", None), ("null", None)])
def test_batch_sizes_accepted(value, kept):
    assert load_config("quickstart", [f"batch_sizes={value}"], mode="sweep").batch_sizes == kept


def test_sweep_train_refuses_batch_sizes():
    with pytest.raises(ConfigError) as info:
        load_config("train", ["batch_sizes=[32,64]"])
    assert str(info.value).startswith("batch_sizes: `sweep train` runs one batch size: set batch_size=N")
    assert load_config("train", ["batch_sizes=[]"]).batch_sizes is None


@pytest.mark.parametrize("batch_size", [16, 256])
def test_a_sampled_trial_gets_its_batch_size(batch_size):
    cfg = load_config("quickstart", ["batch_sizes=[16,256]", "schedules=[constant]", "batch_size=32"], mode="sweep")
    params = {"lr": 0.05, "batch_size": batch_size}
    tc = sample_trial(optuna.trial.FixedTrial(params), "sgd", cfg)
    assert tc.batch_size == batch_size and tc.optimizer_params["lr"] == 0.05
    assert chosen_hyperparameters(tc, cfg)["batch_size"] == batch_size  # Optuna's `hyperparameters` attr
    assert run_params(tc, params)["batch_size"] == batch_size  # the MLflow run's params


def test_without_batch_sizes_the_batch_size_is_fixed():
    cfg = load_config("quickstart", ["schedules=[constant]", "batch_size=48"], mode="sweep")
    trial = optuna.trial.FixedTrial({"lr": 0.05})
    tc = sample_trial(trial, "sgd", cfg)
    assert tc.batch_size == 48 and "batch_size" not in chosen_hyperparameters(tc, cfg)
    assert "batch_size" not in trial.params


def test_a_study_samples_batch_sizes_from_the_list():
    cfg = load_config("quickstart", ["batch_sizes=[8,16,32]", "schedules=[constant]"], mode="sweep")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(30):
        trial = study.ask()
        tc = sample_trial(trial, "adam", cfg)
        assert trial.params["batch_size"] == tc.batch_size
        drawn.add(tc.batch_size)
        study.tell(trial, 0.5)
    assert drawn == {8, 16, 32}
