"""Your own optimizer: declared in a YAML file or from Python, checked like every config value, and
run beside the built-in ones, by workers that import it from code Ray ships them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from optim import OPTIMIZERS, declared
from optim.space import Choice, Conditional, LogUniform, OneMinusLogUniform, from_data, to_data
from sweep import api
from sweep.cli import main
from sweep.core.config import SWEEP, load_config
from sweep.execution.search import sample_trial
from sweep.stores import checkpoints
from tests.sweep_helpers import (
    default_storage,
    default_tracking_uri,
    mlflow_runs,
    runs_per_trial,
    studies,
    sweep_dir_of,
)

ROOT = Path(__file__).resolve().parents[1]
USER_CODE = Path(__file__).parent / "user_code"
SIGN_MOMENTUM = USER_CODE / "sign_momentum.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def user_code(monkeypatch):
    """The user's package importable in this process, as a user's working directory would make it."""
    monkeypatch.syspath_prepend(str(USER_CODE))


GOOD = {
    "class": "sign_optimizers:SignMomentum",
    "hyperparameters": {"lr": 0.001, "beta": 0.9, "weight_decay": 0.0},
    "space": {"lr": {"log_uniform": [1e-4, 1e-2]}},
}

BAD_FILES = [
    ("class", {**GOOD, "class": "sign_optimizers.SignMomentum"}, "package.module:Class"),
    ("class", {**GOOD, "class": "no_such_module:Opt"}, "cannot load no_such_module:Opt"),
    ("class", {**GOOD, "class": "sign_optimizers:Missing"}, "cannot load"),
    ("hyperparameters", {**GOOD, "hyperparameters": {"beta": 0.9}}, "lr included"),
    ("hyperparameters.lr", {**GOOD, "hyperparameters": {"lr": 0, "beta": 0.9}}, "> 0"),
    ("hyperparameters", {**GOOD, "hyperparameters": {"lr": 0.1, "gamma": 1.0}}, "takes no argument 'gamma'"),
    ("hyperparameters.lr", {**GOOD, "hyperparameters": {"lr": float("inf"), "beta": 0.9}}, "> 0"),
    ("space.lr", {**GOOD, "space": {"lr": {"log_uniform": [0, 1]}}}, "0 < low"),
    ("space.lr", {**GOOD, "space": {"lr": {"loguniform": [1e-4, 1e-2]}}}, "log_uniform"),
    ("space.momentum", {**GOOD, "space": {"momentum": {"uniform": [0, 1]}}}, "not a hyperparameter"),
    ("space.beta.when", {**GOOD, "space": {"beta": {"uniform": [0.1, 0.9], "when": {"nesterov": True}}}}, "earlier"),
    ("space.lr", {**GOOD, "lr_free": True}, "lr is fixed"),
    ("space.weight_decay", {**GOOD, "space": {"weight_decay": {"uniform": [-1, 1]}}}, ">= 0, got -1"),
    ("space.lr", {**GOOD, "space": {"lr": {"uniform": [-1, 1]}}}, "> 0"),
    ("space.weight_decay", {**GOOD, "space": {"weight_decay": {"choice": ["a", "b"]}}}, "got 'a'"),
    ("hyperparameters.momentum", {**GOOD, "hyperparameters": {"lr": 0.1, "momentum": 1.5}}, "[0, 1)"),
    ("arguments.lr", {**GOOD, "arguments": {"lr": ["beta"]}}, "hyperparameter's name"),
    ("name", {**GOOD, "name": "adam"}, "built-in"),
    ("colour", {**GOOD, "colour": "red"}, "unknown field"),
]


@pytest.mark.parametrize("field,content,says", BAD_FILES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_FILES)])
def test_a_bad_declaration_exits_2_in_one_line_naming_the_field(
    field, content, says, tmp_path, monkeypatch, capsys, user_code
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(content))
    code = main(["run", "quickstart", f"output_dir={tmp_path / 'out'}", f"optimizers=[sgd,{path}]"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sweep: error: {path}:{field}:"), err
    assert says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]  # nothing written


@pytest.mark.parametrize(
    "text,says",
    [
        ("class: [unclosed", "not valid YAML"),
        ("- a list", "must be a mapping"),
        (b"\xff\xfe", "not UTF-8 text (byte 0xff at offset 0)"),
    ],
    ids=["yaml", "list", "bytes"],
)
def test_an_unreadable_file_exits_2_in_one_line(text, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mine.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["run", "quickstart", f"optimizers=[{path}]", f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "out").exists()


def test_an_unknown_name_lists_the_built_ins_and_the_files(capsys):
    assert main(["run", "quickstart", "optimizers=[sgd,no_such_opt]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep: error: optimizers: unknown 'no_such_opt'"), err
    assert "muon" in err and "conf/optimizer/" in err and "my_lion" in err and "path to a .yaml" in err


@pytest.mark.slow  # my_lion is timm's Lion: importing timm takes about 2 s
def test_a_file_in_conf_optimizer_is_named_like_a_built_in_and_saved_whole():
    cfg = load_config("quickstart", ["optimizers=[adam,my_lion]"], mode=SWEEP)
    assert cfg.optimizers == ("adam", "my_lion")
    saved = cfg.to_dict()["custom_optimizers"]["my_lion"]
    assert saved["class"] == "timm.optim:Lion" and saved["arguments"] == {"betas": ["beta1", "beta2"]}
    # the saved declaration alone gives the same config back (a resume needs no file)
    again = load_config("quickstart", [], mode=SWEEP, values={"optimizers": ["adam", "my_lion"], **cfg.to_dict()})
    assert again.custom_optimizers == cfg.custom_optimizers
    assert cfg.trial_config("my_lion").custom_optimizer == cfg.custom_optimizers[0]
    assert cfg.trial_config("adam").custom_optimizer is None


@pytest.mark.slow  # my_lion is timm's Lion: importing timm takes about 2 s
def test_a_declared_lion_is_timms_lion(tmp_path):
    """The declaration's arguments pack beta1, beta2 into Lion's betas: the same optimizer as the registry's."""
    import torch

    load_config("quickstart", ["optimizers=[my_lion]"], mode=SWEEP)
    hp = {"lr": 0.01, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.3}
    params = [torch.nn.Parameter(torch.linspace(-1, 1, 5)) for _ in range(2)]
    built = [
        OPTIMIZERS["my_lion"].build([params[0]], {**OPTIMIZERS["my_lion"].defaults, **hp}),
        OPTIMIZERS["lion"].build([params[1]], hp),
    ]
    for step in range(5):
        for p, opt in zip(params, built):
            p.grad = torch.cos(p.detach() * (step + 1))
            opt.step()
    assert torch.equal(params[0], params[1])


def test_fixed_values_are_checked_against_the_declared_defaults(user_code, capsys):
    cfg = load_config("quickstart", [f"optimizers=[{SIGN_MOMENTUM}]", "optimizer.beta=0.5"], mode=SWEEP)
    assert cfg.optimizer.fixed == {"beta": 0.5}
    assert main(["run", "quickstart", f"optimizers=[{SIGN_MOMENTUM}]", "optimizer.beta=fast"]) == 2
    assert "sweep: error: optimizer.beta: must be a finite number, got 'fast'" in capsys.readouterr().err


def test_the_vocabulary_reads_back_what_it_writes():
    for dist in (
        LogUniform(1e-4, 0.1),
        OneMinusLogUniform(0.5, 0.99),
        Choice((False, True)),
        Conditional(LogUniform(1e-3, 1.0), "nesterov", (True,)),
    ):
        assert from_data("k", to_data(dist)) == dist


def test_a_conditional_hyperparameter_is_searched_only_when_its_condition_holds(user_code):
    declaration = api.declare_optimizer(
        "cond_sign",
        "sign_optimizers:SignMomentum",
        {"lr": 0.001, "beta": 0.9, "weight_decay": 0.0},
        space={
            "weight_decay": Choice((0.0, 0.01)),
            "beta": {"one_minus_log_uniform": [0.5, 0.99], "when": {"weight_decay": 0.01}},
        },
    )
    cfg = load_config(
        "quickstart",
        ["schedules=[constant]"],
        mode=SWEEP,
        values={"custom_optimizers": {"cond_sign": declaration.to_dict()}, "optimizers": ["cond_sign"]},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        tc = sample_trial(trial, "cond_sign", cfg)
        decayed = tc.optimizer_params["weight_decay"] == 0.01
        assert ("one_minus_beta" in trial.params) == decayed
        seen.add(decayed)
        study.tell(trial, 0.0)
    assert seen == {False, True}


def test_python_refuses_a_class_the_workers_cannot_import():
    import torch

    class Local(torch.optim.SGD):
        pass

    Local.__module__ = "__main__"
    with pytest.raises(api.ConfigError, match="must live in a module the workers can import"):
        api.declare_optimizer("local_sgd", Local, {"lr": 0.1})


@pytest.mark.slow  # a sweep of two optimizers, then a resume
def test_a_sweep_from_python_with_an_optimizer_from_outside_the_package(ray_address, tmp_path, user_code):
    from sign_optimizers import SignMomentum

    mine = api.declare_optimizer(
        "sign_momentum",
        SignMomentum,
        {"lr": 0.001, "beta": 0.9, "weight_decay": 0.0},
        space={"lr": LogUniform(1e-4, 1e-2)},
    )
    common = dict(output_dir=str(tmp_path / "sweeps"), epochs=2, batch_size=64, reeval_seeds=1, report_figures=False)
    result = api.run("quickstart", "schedules=[constant]", optimizers=["sgd", mine], trials=2, name="mine", **common)
    assert {row.optimizer for row in result.rows} == {"sgd", "sign_momentum"}
    cfg = load_config("quickstart", [], mode=SWEEP, values={"name": "mine", "output_dir": common["output_dir"]})
    saved = yaml.safe_load((sweep_dir_of(cfg) / "sweep.yaml").read_text())
    assert saved["custom_optimizers"]["sign_momentum"]["class"] == "sign_optimizers:SignMomentum"
    declared._REGISTERED.pop("sign_momentum")  # a fresh process: only the saved sweep knows it
    OPTIMIZERS.pop("sign_momentum")
    api.resume("mine", "trials=3", output_dir=common["output_dir"])
    cfg = cfg.replace(optimizers=("sgd", "sign_momentum"))
    found = studies(cfg, default_storage(sweep_dir_of(cfg)))
    mine_trials = [t for t in found["sign_momentum"].trials if t.user_attrs.get("sweep.source_trial") is None]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in mine_trials) >= 1
    _, _, children = mlflow_runs(default_tracking_uri(sweep_dir_of(cfg)), "mine")
    assert set(runs_per_trial(children).values()) == {1}  # one MLflow run per trial
    assert any(r.data.tags["sweep.optimizer"] == "sign_momentum" for r in children)


@pytest.mark.slow  # a driver process on the shared Ray: its workers get the user's code from runtime_env
def test_the_cli_ships_the_users_code_to_workers_that_never_saw_it(ray_address, tmp_path):
    """The workers of the shared Ray were started without tests/user_code on their path: they can
    import the user's module only from what the driver ships in its runtime_env."""
    env = {**os.environ, "PYTHONPATH": f"{USER_CODE}:{ROOT}"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep.cli",
            "run",
            "quickstart",
            f"optimizers=[{SIGN_MOMENTUM}]",
            "schedules=[constant]",
            "trials=2",
            "epochs=1",
            "batch_size=64",
            "reeval_seeds=0",
            "report_figures=false",
            f"ray_address={ray_address}",
            f"output_dir={tmp_path / 'sweeps'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    kept = list((tmp_path / "sweeps").rglob("*.pt"))  # the best trial's last checkpoint
    assert kept, done.stdout[-2000:]
    sources = {checkpoints.read(path).optimizer["param_groups"][0]["source"] for path in kept}
    # on this one machine the workers could import the original too (Ray puts the driver's
    # sys.path on theirs); they took the copy the runtime_env shipped, which comes first
    assert sources and all("runtime_resources" in s and str(USER_CODE) not in s for s in sources), sources


def test_a_resume_may_not_declare_a_saved_optimizer_otherwise(user_code):
    from sweep.execution.launch import check_resumable

    cfg = load_config("quickstart", [f"optimizers=[adam,{SIGN_MOMENTUM}]"], mode=SWEEP)
    saved = cfg.to_dict()
    assert check_resumable(cfg, saved) == cfg
    saved["custom_optimizers"]["sign_momentum"]["hyperparameters"]["lr"] = 1e-2
    with pytest.raises(api.ConfigError, match="declares sign_momentum otherwise"):
        check_resumable(cfg, saved)


def test_a_file_reads_1e_minus_3_as_a_number(tmp_path, user_code):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "class: sign_optimizers:SignMomentum\nhyperparameters: {lr: 1e-3, beta: 0.9}\n"
        "space: {lr: {log_uniform: [1e-4, 1e-1]}}\n"
    )
    declaration = declared.load_file(path)
    assert declaration.hyperparameters["lr"] == 1e-3 and declaration.space["lr"] == LogUniform(1e-4, 0.1)


@pytest.mark.slow  # trains two epochs
def test_a_declared_schedule_free_optimizer_trains_and_is_evaluated_at_its_average(tmp_path, digits):
    """schedulefree builds its optimizers in eval mode: a declared one is handed over ready to
    train, and the trial switches it around each evaluation like the built-in ones."""
    from sweep.train.solo import TrialConfig, run_trial

    raw = {
        "class": "schedulefree:AdamWScheduleFree",
        "hyperparameters": {"lr": 0.0025, "beta1": 0.9, "beta2": 0.999},
        "arguments": {"betas": ["beta1", "beta2"]},
        "schedule_free": True,
    }
    cfg = load_config(
        "quickstart",
        ["schedules=[constant]"],
        mode=SWEEP,
        values={"custom_optimizers": {"my_sf": raw}, "optimizers": ["my_sf"]},
    )
    saved = []
    result = run_trial(
        TrialConfig(optimizer="my_sf", custom_optimizer=cfg.custom_optimizers[0], epochs=2), digits, save=saved.append
    )
    assert result.status == "ok", result.reason
    assert result.metrics["val_accuracy"] > 0.5
    assert [g["train_mode"] for g in saved[-1].optimizer["param_groups"]] == [False]  # saved at its average
    with pytest.raises(api.ConfigError, match="schedule-free"):
        load_config(
            "quickstart",
            ["schedules=[cosine]"],
            mode=SWEEP,
            values={"custom_optimizers": {"my_sf": raw}, "optimizers": ["my_sf"]},
        )


def test_declaring_an_edited_class_again_replaces_the_old_one():
    import torch

    class First(torch.optim.SGD):
        pass

    class Second(torch.optim.SGD):
        pass

    for cls in (First, Second):
        cls.__module__ = __name__  # as if defined in this module, which the workers can import
        globals()[cls.__name__] = cls
    one = declared.parse("edited", {"class": f"{__name__}:First", "hyperparameters": {"lr": 0.1}}, "x")
    two = dataclasses.replace(one, loaded=Second)
    declared.register(one)
    declared.register(two)
    assert isinstance(OPTIMIZERS["edited"].build([torch.nn.Parameter(torch.ones(1))], {"lr": 0.1}), Second)
