"""The CLI explains itself: help lists configs, keys with defaults, registries and examples;
--version; --print-config; one --output-dir convention; options after overrides; and help, ls,
bad input and --print-config import neither torch, Ray nor MLflow (they answer at once)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweep.cli import main
from sweep.core.config import KEYS, SWEEP, default_text, load_config
from sweep.stores.sweepdir import SweepDir

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "mlflow")


def _imports_after(args: list[str], cwd: Path) -> tuple[int, str, list[str]]:
    """Run the CLI in a fresh interpreter; return its exit code, output and the heavy modules it loaded."""
    code = (
        "import sys, json\nfrom sweep.cli import main\n"
        f"try:\n    rc = main({args!r})\nexcept SystemExit as e:\n    rc = e.code\n"
        f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    rc, heavy = json.loads(proc.stderr.strip().splitlines()[-1])
    return rc, proc.stdout + proc.stderr, heavy


@pytest.mark.parametrize(
    "args,code",
    [
        (["--help"], 0),
        (["run", "--help"], 0),
        (["train", "--help"], 0),
        (["ls"], 0),
        (["--version"], 0),
        (["run", "trials=0"], 2),
        (["run", "optimizer=adam"], 2),
        (["train", "epochs=0"], 2),
        (["run", "--print-config"], 0),
        (["resume", "ghost"], 2),
        (["report", "ghost"], 2),
    ],
)
def test_light_commands_import_no_torch_ray_or_mlflow(args, code, tmp_path):
    rc, out, heavy = _imports_after(args, tmp_path)
    assert rc == code, out
    assert heavy == [], f"{args} imported {heavy}"
    assert list(tmp_path.iterdir()) == []


def test_top_level_help_is_plain_and_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "`sweep COMMAND --help`" in out
    for command in ("train", "run", "resume", "report", "ls", "ui", "submit"):
        assert command in out


@pytest.mark.parametrize("command", ["run", "train"])
def test_run_and_train_help_list_configs_keys_registries_examples(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "quickstart" in out and "cifar10" in out  # the configs in conf/
    for name in KEYS:
        line = next((line for line in out.splitlines() if line.split()[:1] == [name]), None)
        assert line is not None and default_text(name) in line, name
    for registry_line in ("optimizers", "schedules", "models", "datasets", "samplers", "pruners"):
        assert any(line.strip().startswith(registry_line) for line in out.splitlines()), registry_line
    assert "adamw" in out and "onecycle" in out and "resnet18" in out and "hyperband" in out
    assert f"sweep {command} " in out.split("examples:")[1]


@pytest.mark.parametrize("command", ["resume", "report", "ls", "ui"])
def test_every_command_has_a_description(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert len(out.split("\n\n")[1].strip()) > 30, out  # a sentence after the usage lines


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("sweep 0.")


def test_print_config_is_the_resolved_config(tmp_path, capsys):
    assert main(["run", "quickstart", "trials=3", "--output-dir", str(tmp_path / "o"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config("quickstart", ["trials=3", f"output_dir={tmp_path / 'o'}"], mode=SWEEP).to_dict()
    assert printed == expected and printed["trials"] == 3
    assert list(tmp_path.iterdir()) == []  # printed, not run
    assert main(["train", "optimizer=adam", "optimizer.lr=0.01", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optimizer"] == {"name": "adam", "lr": 0.01}


def test_resume_takes_overrides_and_options_in_any_order(tmp_path, capsys):
    cfg = load_config("quickstart", ["name=later", f"output_dir={tmp_path}"], mode=SWEEP)
    sweep_dir = SweepDir.of(cfg.output_dir, cfg.name)
    sweep_dir.path.mkdir(parents=True)
    sweep_dir.write_config(cfg.to_dict())
    for args in (
        ["resume", "later", "--output-dir", str(tmp_path), "trials=3", "--print-config"],
        ["resume", "later", "trials=3", "--output-dir", str(tmp_path), "--print-config"],
    ):
        assert main(args) == 0
        assert yaml.safe_load(capsys.readouterr().out)["trials"] == 3
    assert main(["resume", "later", "--output-dir", str(tmp_path), "epochs=99"]) == 2  # frozen: refused
    assert "epochs" in capsys.readouterr().err


def test_a_sweep_saved_before_the_typed_config_still_resumes(tmp_path, capsys):
    """Older sweep.yaml files kept the train-mode group name (optimizer: {name: momentum})."""
    cfg = load_config("quickstart", ["name=old", f"output_dir={tmp_path}"], mode=SWEEP)
    sweep_dir = SweepDir.of(cfg.output_dir, cfg.name)
    sweep_dir.path.mkdir(parents=True)
    sweep_dir.write_config({**cfg.to_dict(), "optimizer": {"name": "momentum"}, "schedule": {"name": "constant"}})
    assert main(["resume", "old", "--output-dir", str(tmp_path), "trials=7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optimizer"] == {} and printed["trials"] == 7
