"""Multi-objective search (``objectives=[val_accuracy,train_seconds]``): the config's refusals, the
study adapter on a real journal storage (no Ray), and one small real sweep with its Pareto report."""

from __future__ import annotations

import re

import pytest
from optuna.study import StudyDirection

from sweep.core.config import load_config
from sweep.core.errors import ConfigError
from sweep.core.keys import Attr
from sweep.core.objectives import OBJECTIVES, TRAIN_SECONDS, VAL_ACCURACY
from sweep.core.outcome import Status
from sweep.report import pareto
from sweep.report.comparison import Comparison
from sweep.stores.studies import SweepStudy, outcome_of

BOTH = "objectives=[val_accuracy,train_seconds]"


@pytest.mark.parametrize(
    "overrides, key, says",
    [
        ([BOTH], "pruner", "cannot prune multi-objective trials"),
        ([BOTH, "pruner=asha"], "pruner", "set pruner=none"),
        ([BOTH, "pruner=none", "sampler=cmaes"], "sampler", "cmaes cannot search a multi-objective study"),
        (["objectives=[train_seconds,val_accuracy]", "pruner=none"], "objectives", "must start with val_accuracy"),
        (["objectives=[train_seconds]"], "objectives", "must start with val_accuracy"),
        (["objectives=[val_accuracy,test_accuracy]"], "objectives", "unknown 'test_accuracy'"),
        (["objectives=[val_accuracy,val_accuracy]"], "objectives", "lists a name twice"),
        (["objectives=[]"], "objectives", "non-empty list"),
    ],
)
def test_refused_objectives_name_the_key_and_the_fix(overrides, key, says):
    with pytest.raises(ConfigError) as err:
        load_config("quickstart", overrides, mode="sweep")
    assert err.value.key == key and says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc", "gp"])
def test_samplers_that_search_a_multi_objective_study_are_taken(sampler):
    cfg = load_config("quickstart", [BOTH, "pruner=none", f"sampler={sampler}"], mode="sweep")
    assert cfg.objectives == (VAL_ACCURACY.name, TRAIN_SECONDS.name)
    assert cfg.to_dict()["objectives"] == ["val_accuracy", "train_seconds"]


def test_the_default_is_validation_accuracy_alone_and_frozen():
    from sweep.core.config import FROZEN_KEYS

    assert load_config("quickstart", [], mode="sweep").objectives == ("val_accuracy",)
    assert "objectives" in FROZEN_KEYS and set(OBJECTIVES) == {"val_accuracy", "train_seconds"}


def _open(tmp_path, objectives):
    return SweepStudy.open(
        f"journal:///{tmp_path / 'optuna.journal'}",
        "mo",
        "sgd",
        "id",
        sampler="tpe",
        pruner="none",
        seed=0,
        trials=4,
        epochs=2,
        objectives=objectives,
    )


def test_a_multi_objective_study_tells_reports_and_reopens(tmp_path):
    study = _open(tmp_path, ("val_accuracy", "train_seconds"))
    assert study.multi_objective and study.study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    told = []
    for accuracy, seconds, status in [(0.5, 2.0, Status.OK), (0.7, 4.0, Status.OK), (0.9, 1.0, Status.DIVERGED)]:
        trial = study.ask()
        study.report(trial, accuracy, 1)  # Trial.report would raise on a multi-objective study
        assert not study.should_prune(trial)
        told.append(study.finish(trial.number, status, metrics={"train_seconds": seconds}, value=accuracy))
    records = study.trials()
    assert [t.values for t in records] == [[0.5, 2.0], [0.7, 4.0], [VAL_ACCURACY.worst, TRAIN_SECONDS.worst]]
    assert [dict(t.intermediate_values) for t in records] == [{1: 0.5}, {1: 0.7}, {1: 0.9}]  # the curves
    assert [o.value for o in told] == [outcome_of(t).value for t in records] == [0.5, 0.7, 0.0]
    assert [t.number for t in study.pareto()] == [0, 1]  # the diverged trial is no result
    again = _open(tmp_path, ("val_accuracy", "train_seconds"))  # resume: the same directions
    assert again.study.directions == study.study.directions and again.objectives == study.objectives


def test_a_single_objective_study_is_as_before(tmp_path):
    study = _open(tmp_path, ("val_accuracy",))
    trial = study.ask()
    study.report(trial, 0.4, 1)
    study.finish(trial.number, Status.OK, metrics={"train_seconds": 3.0}, value=0.4)
    assert not study.multi_objective and study.record(0).value == 0.4 and study.pareto() == []
    assert Attr.OBJECTIVES not in study.study.user_attrs


def test_a_single_objective_comparison_has_no_pareto_section():
    empty = Comparison("s", "digits", "simple_cnn", 1, 1, 0, "finished", "now", "rule", ())
    assert pareto.markdown(empty, str) == [] and pareto.html_section(empty) == [] and pareto.figure(empty) is None


def _pareto_rows(markdown: str) -> set[tuple[str, int]]:
    section = markdown.split(f"## {pareto.TITLE}", 1)[1].split("\n\n![", 1)[0]
    return {(m[1], int(m[2])) for m in re.finditer(r"^\| (\w+) \| (\d+) \|", section, re.M)}


@pytest.mark.slow
def test_a_multi_objective_sweep_reports_each_pareto_set(ray_address, sweep_overrides):
    from sweep.cli import main
    from sweep.execution.launch import run_sweep
    from tests.sweep_helpers import default_storage, studies, sweep_dir_of

    overrides = [BOTH, "pruner=none", "name=pareto", "optimizers=[sgd,adam]", "trials=3", "epochs=1"]
    cfg = load_config("quickstart", sweep_overrides + overrides, mode="sweep")
    assert run_sweep(cfg).rows
    by_opt = studies(cfg, default_storage(sweep_dir_of(cfg)))
    best = set()
    for opt, study in by_opt.items():
        assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
        assert all(len(t.values) == 2 and t.values[1] > 0 for t in study.trials)
        best |= {(opt, t.number) for t in study.best_trials}
    report = sweep_dir_of(cfg) / "report"
    assert _pareto_rows((report / "comparison.md").read_text()) == best
    assert 'id="pareto"' in (report / "report.html").read_text() and not (report / "pareto.png").exists()

    (report / "comparison.md").unlink()
    assert main(["report", cfg.name, "--output-dir", cfg.output_dir]) == 0  # draws the figures too
    assert _pareto_rows((report / "comparison.md").read_text()) == best
    assert (report / "pareto.png").stat().st_size > 0 and 'id="fig-pareto"' in (report / "report.html").read_text()
