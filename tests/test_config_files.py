"""Every YAML file the product reads (a sweep config, a benchmark config, an optimizer declaration)
is read one way (``optim.yamlfile``): a key given twice, or a byte that is not UTF-8, is refused in
one line naming the file and the place, exit 2, nothing written; ``1e-3`` is a number in each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from optim import yamlfile
from sweep.cli import main

SWEEP = "name: mine\noptimizers: [sgd]\nepochs: 2\nepochs: 3\n"
BENCHMARK = (
    "name: bench\nbenchmark:\n  workloads:\n    w:\n      dataset: digits\n      epochs: 2\n"
    "      target: 0.5\n      epochs: 3\noptimizers: [sgd]\n"
)
OPTIMIZER = "class: torch.optim:SGD\nhyperparameters: {lr: 0.1}\nhyperparameters: {lr: 0.2}\n"


def _refused(tmp_path: Path, capsys, *argv: str) -> str:
    """Run ``sweep ARGV`` (output under tmp_path/out): it exits 2 with one line, and writes nothing."""
    assert main([*argv, f"output_dir={tmp_path / 'out'}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    return err.strip()


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Run in tmp_path: a command that wrote anything there (./sweeps, ./data) would show."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _nothing_but(folder: Path, *names: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_a_key_given_twice_in_a_sweep_config_is_refused_naming_it(here, capsys):
    (here / "mine.yaml").write_text(SWEEP)
    for command in ("run", "train"):
        err = _refused(here, capsys, command, str(here / "mine.yaml"))
        where = f"{here / 'mine.yaml'} line 4"
        assert err == f"sweep: error: config: {where}: key 'epochs' is given twice (first on line 3); keep one"
    _nothing_but(here, "mine.yaml")


def test_a_key_given_twice_in_a_benchmark_config_is_refused_naming_it(here, capsys):
    (here / "bench.yaml").write_text(BENCHMARK)
    err = _refused(here, capsys, "run", str(here / "bench.yaml"))
    assert f"{here / 'bench.yaml'} line 8: key 'epochs' is given twice (first on line 6)" in err, err
    _nothing_but(here, "bench.yaml")


def test_a_key_given_twice_in_an_optimizer_file_is_refused_naming_it(here, capsys):
    (here / "mine.yaml").write_text(OPTIMIZER)
    err = _refused(here, capsys, "run", "quickstart", f"optimizers=[{here / 'mine.yaml'}]")
    assert f"{here / 'mine.yaml'} line 3: key 'hyperparameters' is given twice (first on line 2)" in err, err
    _nothing_but(here, "mine.yaml")


@pytest.mark.parametrize("kind", ["sweep", "benchmark", "optimizer"])
def test_a_byte_that_is_not_utf8_is_refused_with_its_offset(kind, here, capsys):
    text = {"sweep": SWEEP, "benchmark": BENCHMARK, "optimizer": OPTIMIZER}[kind].encode()
    first_line = text.index(b"\n") + 1
    (here / "mine.yaml").write_bytes(text[:first_line] + b"# caf\xe9\n" + text[first_line:])  # Latin-1 é
    argv = ["run", "quickstart", f"optimizers=[{here / 'mine.yaml'}]"] if kind == "optimizer" else ["run", "mine.yaml"]
    err = _refused(here, capsys, *argv)
    assert f"mine.yaml line 2: not UTF-8 text (byte 0xe9 at offset {first_line + 5})" in err, err
    assert "Traceback" not in err
    _nothing_but(here, "mine.yaml")


def test_scientific_notation_is_a_number_in_every_file(here, capsys):
    (here / "sweep.yaml").write_text("name: sci\noptimizers: [adam]\noptimizer:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    assert main(["run", str(here / "sweep.yaml"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optimizer"] == {"lr": 0.001, "weight_decay": 0.0005}
    (here / "opt.yaml").write_text("class: torch.optim:SGD\nhyperparameters: {lr: 1e-3}\n")
    assert main(["run", "quickstart", f"optimizers=[{here / 'opt.yaml'}]", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["custom_optimizers"]["opt"]["hyperparameters"] == {"lr": 0.001}
    _nothing_but(here, "sweep.yaml", "opt.yaml")


def test_the_reader_keeps_merge_keys_and_finds_twins_in_flow_mappings(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("base: &b {lr: 0.1, momentum: 0.9}\nmine:\n  <<: *b\n  lr: 0.2\n")  # overriding a merge: fine
    assert yamlfile.read(path)["mine"] == {"lr": 0.2, "momentum": 0.9}
    path.write_text("optimizer: {lr: 0.1, lr: 0.2}\n")
    with pytest.raises(yamlfile.FileError, match=r"line 1: key 'lr' is given twice \(first on line 1\)"):
        yamlfile.read(path)
    assert yamlfile.loads("[1e-3, -2.5E+2, 3, 1.0, x1e3]") == [0.001, -250.0, 3, 1.0, "x1e3"]
