"""Benchmark mode: the config and its rulesets (quick), then a real benchmark on the session's Ray
(slow): every child study full, the report's score recomputed by hand from its trials, the
report rebuilt from the stores alone, a driver killed mid-way and resumed with exact counts."""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweep.cli import main
from sweep.core.benchmark import Ruleset, Target, from_values, load_benchmark
from sweep.core.errors import ConfigError
from tests.sweep_helpers import mark_damaged_on_purpose

REPO = Path(__file__).resolve().parent.parent


def test_the_shipped_benchmark_loads_as_one_sweep_per_workload_and_study():
    bench, saved = load_benchmark("benchmark")
    assert bench.ruleset == Ruleset.EXTERNAL and bench.studies == 3 and len(bench.workloads) == 3
    assert len(bench.children) == 9 and len(bench.base.optimizers) == 17
    for child in bench.children:
        cfg = child.config
        assert cfg.name == f"benchmark.{child.workload}.s{child.study}"
        assert (cfg.sampler, cfg.pruner, cfg.reeval_seeds, cfg.seed) == ("qmc", "none", 0, child.study)
        assert cfg.storage == f"journal:///{bench.path / 'optuna.journal'}"  # one store for the whole benchmark
        assert cfg.tracking_uri == f"sqlite:///{bench.path / 'mlflow.db'}"
        assert Path(cfg.output_dir) == bench.path / "sweeps"
    lenet = next(c.config for c in bench.children if c.workload == "fmnist_lenet")
    assert (lenet.model, lenet.train_subset, lenet.target_accuracy, lenet.eval_every_steps) == ("lenet", 3000, 0.72, 16)
    relative = next(c.config for c in bench.children if c.workload == "digits_cnn")
    assert relative.target_accuracy is None  # known only once the benchmark has run: the report finds it
    again, _ = from_values(saved, "benchmark.yaml")  # what `sweep resume` reads back
    assert [c.config for c in again.children] == [c.config for c in bench.children]


def test_self_tuning_trains_defaults_once_per_study_with_half_again_the_epochs():
    bench, _ = load_benchmark("benchmark", ["benchmark.ruleset=self", "benchmark.studies=3"])
    digits = [c.config for c in bench.children if c.workload == "digits_cnn"]
    assert [c.seed for c in digits] == [0, 1, 2]
    assert all(c.search is False and c.trials == 1 and c.epochs == 5 for c in digits)  # ceil(1.5 * 3)


def test_the_tuned_ruleset_is_todays_sweep_per_workload():
    bench, _ = load_benchmark("benchmark", ["benchmark.ruleset=tuned", "benchmark.studies=1"])
    assert [c.config.name for c in bench.children] == [
        "benchmark.digits_cnn",
        "benchmark.fmnist_lenet",
        "benchmark.fmnist_cnn",
    ]
    assert all(
        (c.config.sampler, c.config.pruner, c.config.reeval_seeds) == ("tpe", "median", 3) for c in bench.children
    )


def test_targets():
    assert Target.parse("t", 0.9).resolve(None) == 0.9
    relative = Target.parse("t", "relative:0.99")
    assert relative.relative and relative.resolve(None) is None and relative.resolve(0.8) == pytest.approx(0.792)
    for bad in (0, 1.5, "relative:2", "relative:x", "0.9x", True):
        with pytest.raises(ConfigError, match="^t: must be a validation accuracy"):
            Target.parse("t", bad)


BAD = [
    (["benchmark.ruleset=bogus"], "benchmark.ruleset: unknown 'bogus'"),
    (["benchmark.studies=0"], "benchmark.studies: must be an integer in [1, 100]"),
    (["benchmark.ruleset=tuned"], "benchmark.studies: the tuned ruleset runs one study"),
    (["benchmark.r_max=1"], "benchmark.r_max: must be a number > 1"),
    (["benchmark.workloads.digits_cnn.target=1.5"], "benchmark.workloads.digits_cnn.target: must be a validation"),
    (["benchmark.workloads.digits_cnn.epochs=0"], "benchmark.workloads.digits_cnn.epochs: must be an integer"),
    (["benchmark.workloads.digits_cnn.optimizer=adam"], "benchmark.workloads.digits_cnn.optimizer: unknown key"),
    (["benchmark.workloads.digits_cnn.model=nope"], "benchmark.workloads.digits_cnn.model: unknown 'nope'"),
    (["benchmark.colour=red"], "benchmark.colour: unknown key"),
    (["trials=0"], "trials: must be an integer"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[b[0][0] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(overrides, message, tmp_path, capsys):
    assert main(["run", "benchmark", *overrides, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweep: error: {message}") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_workload_without_a_target_is_refused(tmp_path, capsys):
    config = tmp_path / "b.yaml"
    config.write_text(
        yaml.safe_dump({"benchmark": {"workloads": {"w": {"dataset": "digits", "model": "lenet", "epochs": 1}}}})
    )
    assert main(["run", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    assert "benchmark.workloads.w.target: is required" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- a real benchmark ------------------------------------------------------------------------

TINY = {
    "name": "tiny",
    "benchmark": {
        "ruleset": "external",
        "studies": 2,
        "workloads": {
            "digits_cnn": {
                "dataset": "digits",
                "model": "simple_cnn",
                "epochs": 2,
                "batch_size": 64,
                "eval_every_steps": 6,
                "target": "relative:0.5",
            },
            "digits_lenet": {"dataset": "digits", "model": "lenet", "epochs": 2, "batch_size": 32, "target": 0.2},
        },
    },
    "optimizers": ["adam", "adamw"],  # both reach both targets in some study: scores between 0 and 1
    "trials": 2,
    "workers": 2,
}


def _write_tiny(tmp_path, **changes) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def _child_studies(bench):
    from sweep.stores.studies import SweepStudy, open_storage, study_name

    open_storage.cache_clear()
    return {
        (c.workload, c.study, opt): SweepStudy.find(c.config.storage, study_name(c.config.name, opt))
        for c in bench.children
        for opt in c.config.optimizers
    }


def _scores_by_hand(trials_csv: Path, r_max: float = 4.0) -> dict[str, float]:
    """AlgoPerf's score from the per-trial table alone: a study's fastest trial to target, the
    median over studies, the ratio to the fastest optimizer, the area under the profile."""
    rows = list(csv.DictReader(trials_csv.open()))
    cells: dict[tuple[str, str, str], float] = {}
    for r in rows:
        t = float(r["time_to_target_s"]) if r["time_to_target_s"] else math.inf
        key = (r["workload"], r["optimizer"], r["study"])
        cells[key] = min(cells.get(key, math.inf), t)
    workloads = sorted({k[0] for k in cells})
    optimizers = sorted({k[1] for k in cells})
    median = {
        (w, o): statistics.median([t for (w2, o2, _), t in cells.items() if (w2, o2) == (w, o)])
        for w in workloads
        for o in optimizers
    }
    scores = {}
    for o in optimizers:
        area = 0.0
        for w in workloads:
            best = min(median[(w, p)] for p in optimizers)
            ratio = median[(w, o)] / best if math.isfinite(best) and math.isfinite(median[(w, o)]) else math.inf
            area += max(0.0, r_max - max(1.0, ratio)) / len(workloads)
        scores[o] = area / (r_max - 1)
    return scores


@pytest.fixture(scope="module")
def tiny_benchmark(ray_address, tmp_path_factory):
    """The tiny benchmark, run once in this process on the session's Ray: (its config, its output
    folder, what `sweep run` printed)."""
    import io
    from contextlib import redirect_stdout

    tmp = tmp_path_factory.mktemp("bench")
    config, out = _write_tiny(tmp), tmp / "out"
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["run", str(config), "--output-dir", str(out), f"ray_address={ray_address}"])
    assert code == 0, printed.getvalue()
    return config, out, printed.getvalue()


@pytest.mark.slow
def test_a_benchmark_runs_to_its_report_and_the_report_rebuilds_from_the_stores(tiny_benchmark, capsys):
    config, out, printed = tiny_benchmark
    folder = out / "tiny"
    assert f"report:  {folder / 'report' / 'benchmark.html'}" in printed
    bench, _ = load_benchmark(str(config), [f"output_dir={out}"])
    from sweep.stores.studies import counts_against_budget

    for key, study in _child_studies(bench).items():
        trials = study.trials()
        assert sum(counts_against_budget(t) for t in trials) == 2, key
        assert all(t.user_attrs.get("eval_curve") for t in trials), key  # every trial's evaluations kept
        if key[0] == "digits_lenet":  # an explicit target: measured on the worker too
            assert all("final_target_reached" in t.user_attrs for t in trials), key

    report = folder / "report"
    for name in ("benchmark.html", "benchmark.md", "profile.png", "front.png", "scores.csv", "workloads.csv"):
        assert (report / name).stat().st_size > 0, name
    trials = list(csv.DictReader((report / "trials.csv").open()))
    assert len(trials) == 2 * 2 * 2 * 2  # workloads x studies x optimizers x trials
    by_hand = _scores_by_hand(report / "trials.csv")
    shown = {r["optimizer"]: float(r["score"]) for r in csv.DictReader((report / "scores.csv").open())}
    assert shown == {o: pytest.approx(s, abs=5e-4) for o, s in by_hand.items()}
    assert any(0 < s < 1 for s in by_hand.values()), by_hand  # ratios were computed, not all 0 or 1
    markdown = (report / "benchmark.md").read_text()
    assert "target 0.2000" in markdown and "relative:0.5: moves as the benchmark grows" in markdown

    before = {n: (report / n).read_text() for n in ("scores.csv", "workloads.csv", "trials.csv")}
    for name in before:
        (report / name).unlink()
    assert main(["report", "tiny", "--output-dir", str(out)]) == 0
    assert {n: (report / n).read_text() for n in before} == before  # from the stores alone
    assert main(["ls", "--output-dir", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and "external" in listing


def _cut_in_half(path: Path) -> None:
    for side in ("-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "file, damage, says",
    [
        ("benchmark.yaml", lambda p: p.write_text("benchmark: [\n"), ": unreadable (line "),
        ("mlflow.db", _cut_in_half, ": is cut short ("),  # the store its child sweeps share
    ],
)
def test_a_damaged_benchmark_is_one_line_for_every_command_and_ls_lists_the_rest(
    tiny_benchmark, tmp_path, capsys, file, damage, says
):
    from tests.test_damaged_sweeps import snapshot

    _, built, _ = tiny_benchmark
    out = tmp_path / "out"
    shutil.copytree(built / "tiny", out / "broken")
    shutil.copytree(built / "tiny", out / "tiny")
    mark_damaged_on_purpose(tmp_path)  # the suite's closing `sweep check` passes it by
    damage(out / "broken" / file)
    before = snapshot(out)
    for command in (["report", "broken"], ["resume", "broken"], ["ui", "broken", "--port", "1"]):
        assert main([*command, "--output-dir", str(out)]) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{out / 'broken' / file}{says}" in err, err
    assert main(["ls", "--output-dir", str(out)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["broken"].split()[1] == "damaged" and f"{file}{says}" in rows["broken"], rows
    assert rows["tiny"].split()[1] == "finished", rows
    assert snapshot(out) == before


@pytest.mark.slow
@pytest.mark.browser
def test_the_benchmark_report_opens_in_mlflow_with_every_image(tiny_benchmark):
    """`sweep ui BENCH` serves the benchmark's one store; its report run's benchmark.html opens in
    MLflow's artifact viewer with every image loaded (screenshots to $SWEEP_TEST_SCREENSHOTS)."""
    import json
    import urllib.request

    from tests import services
    from tests.test_sweep_cli import IMAGES, SCREENSHOTS, _wait_for, start_ui

    _, out, _ = tiny_benchmark
    shots = Path(SCREENSHOTS) if SCREENSHOTS else out / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    server, port = start_ui("tiny", out)
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        next(line for line in server.stdout if base in line)  # printed once /health answers

        def search(path: str, body: dict) -> dict:
            request = urllib.request.Request(
                f"{base}/api/2.0/mlflow/{path}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            return json.load(urllib.request.urlopen(request, timeout=10))

        experiments = {e["name"]: e for e in search("experiments/search", {"max_results": 50})["experiments"]}
        assert {
            "tiny",
            "tiny.digits_cnn.s0",
            "tiny.digits_cnn.s1",
            "tiny.digits_lenet.s0",
            "tiny.digits_lenet.s1",
        } <= set(experiments)
        exp = experiments["tiny"]["experiment_id"]
        (run,) = search("runs/search", {"experiment_ids": [exp]})["runs"]
        browser = services.browser()
        browser.get(f"{base}/#/experiments/{exp}/runs/{run['info']['run_id']}/artifacts/report/benchmark.html")
        frame = _wait_for(browser, lambda b: b.find_elements("tag name", "iframe"), "the artifact viewer's frame")[0]
        browser.save_screenshot(str(shots / "benchmark-in-mlflow.png"))
        browser.switch_to.frame(frame)
        images = _wait_for(
            browser,
            lambda b: (lambda i: i if i and all(c for _, c, _, _ in i) else None)(b.execute_script(IMAGES)),
            "the benchmark report's images",
        )
        assert sorted(i[0] for i in images) == ["fig-front", "fig-profile"], images
        assert all(width > 0 for _, _, width, _ in images), images
        body = browser.find_element("tag name", "body").text
        assert "Score" in body and "digits_lenet: target 0.2000" in body
        browser.switch_to.default_content()
    finally:
        if browser is not None:
            browser.quit()
        os.kill(server.pid, 15)
        assert server.wait(timeout=30) == 0


@pytest.mark.slow
def test_a_benchmark_killed_mid_way_resumes_with_exact_counts(ray_address, tmp_path):
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    config = _write_tiny(tmp_path)
    out = tmp_path / "out"
    bench, _ = load_benchmark(str(config), [f"output_dir={out}"])
    command = [
        sys.executable,
        "-m",
        "sweep.cli",
        "run",
        str(config),
        "--output-dir",
        str(out),
        f"ray_address={ray_address}",
    ]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    second = bench.children[1]  # killed while the benchmark's second sweep runs
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            time.sleep(0.3)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            if not (out / "tiny" / "optuna.journal").exists():
                continue
            studies = _child_studies(bench)
            states = [
                t.state
                for (w, s, _), st in studies.items()
                if (w, s) == (second.workload, second.study) and st
                for t in st.trials()
            ]
            if TrialState.RUNNING in states:
                break
        else:
            raise AssertionError("never saw the second sweep running")
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()

    rerun = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "resume", "tiny", "--output-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    client = MlflowClient(bench.base.tracking_uri)
    from sweep.stores.studies import counts_against_budget

    for key, study in _child_studies(bench).items():
        trials = study.trials()
        assert sum(counts_against_budget(t) for t in trials) == 2, key
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], key
    for child in bench.children:
        exp = client.get_experiment_by_name(child.config.name)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        trial_runs = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
        keys = [(r.data.tags["sweep.optimizer"], r.data.tags["optuna.trial_number"]) for r in trial_runs]
        assert len(keys) == len(set(keys)), child.config.name  # one run per trial, none twice
        assert not [r for r in runs if r.info.status == "RUNNING"], child.config.name
    assert (out / "tiny" / "state").read_text().strip() == "finished"


def test_without_search_a_trial_trains_at_the_defaults():
    import optuna

    from sweep.core.config import load_config
    from sweep.execution.search import sample_trial

    cfg = load_config(
        "quickstart", ["search=false", "schedules=[cosine,constant]", "optimizer.momentum=0.5"], mode="sweep"
    )
    trial = optuna.create_study().ask()
    tc = sample_trial(trial, "momentum", cfg)
    assert tc.optimizer_params == {"momentum": 0.5} and tc.schedule == "cosine" and tc.schedule_params == {}
    assert trial.params == {}  # nothing drawn
