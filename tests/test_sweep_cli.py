"""`sweep run` input checking, `sweep ls`, and `sweep ui` serving a sweep over real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.stores.sweepdir import SweepDir
from tests import services

REPO = Path(__file__).resolve().parent.parent

BAD_VALUES = [
    ("name", "name=has space"),
    ("optimizers", "optimizers=[sgd,bogus_opt]"),
    ("optimizers", "optimizers=[]"),
    ("trials", "trials=0"),
    ("trials", "trials=two"),
    ("epochs", "epochs=1.5"),
    ("workers", "workers=-1"),
    ("dataset", "dataset=imagenet"),
    ("model", "model=vgg"),
    ("output_dir", "output_dir="),
    ("storage", "storage=postgresql://"),
    ("storage", "storage=not-a-url"),
    ("tracking_uri", "tracking_uri=ftp://host/x"),
    ("tracking_uri", "tracking_uri=http://:5000"),
    ("sampler", "sampler=grid"),
    ("pruner", "pruner=sometimes"),
    ("seed", "seed=-3"),
    ("schedules", "schedules=[cosine,sawtooth]"),
    ("optimizer.momentum", "optimizer.momentum=1.5"),
    ("optimizer.betas", "optimizer.betas=0.9"),
    ("schedule.warmup_epochs", "schedule.warmup_epochs=-1"),
    ("schedule.pct_start", "schedule.pct_start=1"),
    ("schedule.factor", "schedule.factor=1.5"),
    ("schedule.step_epochs", "schedule.step_epochs=0"),
    ("optimizer.momentum", "optimizer.momentum=0"),  # the quick-start list includes nesterov
    ("ray_address", "ray_address=not an address"),
    ("num_gpus", "num_gpus=-1"),
    ("bf16", "bf16=maybe"),
    ("channels_last", "channels_last=1"),
    ("compile", "compile=sometimes"),
    ("divergence_check_steps", "divergence_check_steps=-1"),
    ("no_such_key", "no_such_key=1"),
    ("storage", "storage=postgresql://postgres@127.0.0.1:1/test"),  # nothing listens there
    pytest.param(
        "storage",
        f"storage={services.pg_url('no_such_database')}",
        marks=pytest.mark.postgres,
        id=f"storage={services.pg_url('no_such_database')}",
    ),  # the server must say "no such database"
    ("tracking_uri", "tracking_uri=http://127.0.0.1:1"),
    ("tracking_uri", "tracking_uri=journal:///tmp/x.journal"),
    ("ray_address", "ray_address=127.0.0.1:1"),
    ("val_fraction", "val_fraction=0.9999"),  # leaves no training images
    ("l1", "l1=.inf"),
    ("output_dir", "output_dir=/proc/sweeps"),  # writable by its mode bits as root, yet no folder can be made
    ("storage", "storage=journal:///{tmp}/no-such-folder/optuna.journal"),
    ("device", "device=cuda"),  # a sweep's trials get only the GPUs they ask for: num_gpus=0
    ("optimizer", "optimizer=adam"),  # `sweep run` searches optimizers=[...]; not silently ignored
    ("schedule.warmup_epochs", "schedule.warmup_epochs=6"),  # the quick start has 6 epochs
]


@pytest.mark.parametrize("key,override", BAD_VALUES, ids=[b[1] if isinstance(b, tuple) else b.id for b in BAD_VALUES])
def test_bad_values_exit_2_and_write_nothing(key, override, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    override = override.replace("{tmp}", str(tmp_path))
    code = main(
        ["run", "quickstart", f"output_dir={tmp_path / 'out'}", override]
        if not override.startswith("output_dir")
        else ["run", "quickstart", override]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"sweep: error: {key}:"), err
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_files_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "cifar10", f"data_dir={tmp_path / 'nodata'}", f"output_dir={tmp_path / 'out'}"])
    out = capsys.readouterr()
    assert code == 2 and "nodata" in out.out + out.err
    assert list(tmp_path.iterdir()) == []


def test_unknown_config_name_lists_choices(capsys):
    assert main(["run", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "quickstart" in err and "cifar10" in err


def test_yaml_syntax_error_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.yaml").write_text("name: x\noptimizers: [sgd, adam\ntrials: 2\n")
    assert main(["run", str(tmp_path / "broken.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sweep: error: config: ") and "line " in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["broken.yaml"]


def test_resume_unknown_sweep(tmp_path, capsys):
    assert main(["resume", "ghost", "--output-dir", str(tmp_path)]) == 2
    assert "ghost" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCREENSHOTS = os.environ.get("SWEEP_TEST_SCREENSHOTS")  # where the browser test keeps its screenshots


def _wait_for(browser, condition, what: str, timeout_s: float = 90):
    """Poll ``condition(browser)`` until it is truthy: the MLflow UI renders asynchronously."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition(browser)
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"never saw {what}; page text: {browser.find_element('tag name', 'body').text[:1500]}")


def start_ui(name: str, output_dir) -> tuple[subprocess.Popen, int]:
    """`sweep ui NAME` as a user starts it, on a free port, in its own process group (SIGTERM stops it)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sweep.cli", "ui", name, "--output-dir", str(output_dir), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    return server, port


IMAGES = "return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, i.src.slice(0, 22)])"


@pytest.mark.slow
@pytest.mark.browser
def test_ls_ui_and_report_in_a_browser(ray_address, tmp_path, capsys):
    """A sweep with re-evaluation, then `sweep ui` in headless Chromium: the runs table shows the
    parents, trials, re-evaluations and the report run; the report artifact opens with every image
    loaded. Screenshots go to $SWEEP_TEST_SCREENSHOTS (else the test's tmp dir)."""
    out_dir = tmp_path / "sweeps"
    assert (
        main(
            [
                "run",
                "quickstart",
                f"output_dir={out_dir}",
                "name=uitest",
                "optimizers=[adam]",
                "trials=2",
                "epochs=1",
                "reeval_seeds=2",
                f"ray_address={ray_address}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    html = out_dir / "uitest" / "report" / "report.html"
    assert f"report:  {html}" in printed and html.is_file()
    assert max(len(line.replace(str(out_dir), "DIR")) for line in printed.splitlines()) <= 100, printed  # no wrap
    assert main(["ls", "--output-dir", str(out_dir)]) == 0
    listing = capsys.readouterr().out
    assert "uitest" in listing and "finished" in listing

    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    server, port = start_ui("uitest", out_dir)
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        ready = next(line for line in server.stdout if base in line)  # printed once /health answers
        url = ready[ready.index(base) :].split()[0]
        assert url.endswith("/runs?workflowType=machine_learning")
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 10}).encode(),
            headers={"Content-Type": "application/json"},
        )
        experiments = json.load(urllib.request.urlopen(request, timeout=10))["experiments"]
        exp = next(e for e in experiments if e["name"] == "uitest")
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [exp["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        runs = json.load(urllib.request.urlopen(request, timeout=10))["runs"]
        roles = sorted(next(t["value"] for t in r["data"]["tags"] if t["key"] == "sweep.role") for r in runs)
        assert roles == ["parent"] + ["reeval"] * 2 + ["sweep"] + ["trial"] * 2
        report_run = next(r for r in runs if {"key": "sweep.role", "value": "sweep"} in r["data"]["tags"])

        browser = services.browser()
        browser.get(url)
        _wait_for(
            browser,
            lambda b: "6 matching runs" in b.find_element("tag name", "body").text,
            "the runs table with 6 runs",
        )
        browser.save_screenshot(str(shots / "runs-table.png"))

        # the report in MLflow's artifact viewer (it renders the HTML artifact in an iframe)
        browser.get(
            f"{base}/#/experiments/{exp['experiment_id']}/runs/{report_run['info']['run_id']}"
            "/artifacts/report/report.html"
        )
        frame = _wait_for(browser, lambda b: b.find_elements("tag name", "iframe"), "the artifact viewer's frame")[0]
        browser.save_screenshot(str(shots / "report-in-mlflow.png"))
        browser.switch_to.frame(frame)
        images = _wait_for(
            browser,
            lambda b: (lambda i: i if i and all(c for _, c, _, _ in i) else None)(b.execute_script(IMAGES)),
            "the report's images",
        )
        assert len(images) >= 5 and all(width > 0 for _, _, width, _ in images), images
        assert all(src.startswith("data:image/png;base64") for *_, src in images), images
        assert "adam" in browser.find_element("tag name", "body").text
        browser.switch_to.default_content()
        print(f"screenshots: {shots}")
    finally:
        if browser is not None:
            browser.quit()
        os.kill(server.pid, 15)  # `sweep ui` stops its whole server on SIGTERM
        assert server.wait(timeout=30) == 0


def test_second_driver_on_a_running_sweep_is_refused(tmp_path, capsys):
    sweep_dir = tmp_path / "busy"
    sweep_dir.mkdir()
    (sweep_dir / "state").write_text("running otherhost:1\n")
    with SweepDir(sweep_dir).claim() as sweep_id:  # as a live driver holds it
        assert sweep_id is not None
        assert main(["run", "quickstart", "name=busy", f"output_dir={tmp_path}"]) == 2
        assert "another driver" in capsys.readouterr().err
        assert sorted(p.name for p in sweep_dir.iterdir()) == ["id", "lock", "state"]
        assert main(["ls", "--output-dir", str(tmp_path)]) == 0
    assert not SweepDir(sweep_dir).is_locked()  # released: a dead driver's "running" reads as interrupted
    assert SweepDir(sweep_dir).state() == "interrupted"


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "plain-file").write_text("")
    assert main(["run", "quickstart", f"output_dir={tmp_path / 'plain-file' / 'sweeps'}"]) == 2
    assert capsys.readouterr().err.startswith("sweep: error: output_dir:")
    assert [p.name for p in tmp_path.iterdir()] == ["plain-file"]


@pytest.mark.slow  # asks the session's Ray (started here if no test before did)
def test_more_gpus_than_any_node_exit_2(ray_address, tmp_path, capsys):
    assert main(["run", "quickstart", f"output_dir={tmp_path / 'out'}", "num_gpus=2"]) == 2  # the session's Ray has 1
    assert capsys.readouterr().err.startswith("sweep: error: num_gpus: each trial asks for 2 GPU")
    assert list(tmp_path.iterdir()) == []
