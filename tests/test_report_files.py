"""The report's figures and files, from a ``Comparison`` built by hand (no store, no sweep).

The comparison is shaped like a real sweep's: three optimizers, one not yet re-evaluated, pruned
and diverged trials, two batch sizes, one optimizer without importances. The checks are what a
reader relies on: every file is there and readable, the HTML page stands alone (images inside it,
nothing fetched from elsewhere), ties are visible, and nothing from the data is injected as markup.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import math
import random
from html import escape
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.image import imread

from optim import OPTIMIZERS
from sweep.core.outcome import Status
from sweep.report import plots
from sweep.report.comparison import (
    BudgetCurve,
    Comparison,
    OptimizerResult,
    ParetoFront,
    ParetoTrial,
    SearchedTrial,
    SeedRun,
    SeedStats,
)
from sweep.report.files import RankingRow, ReportFiles, html_page, ranking_rows, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS, STEPS = 8, 36


def _curve(rng: random.Random, top: float, tau: float, epochs: int = EPOCHS) -> tuple[float, ...]:
    return tuple(
        round(min(1.0, top - (top - 0.1) * math.exp(-e / tau) + rng.gauss(0, 0.004)), 4) for e in range(1, epochs + 1)
    )


def _budget(values: list[float]) -> BudgetCurve:
    """The exact expected best of k trials drawn without replacement, and its 5/95 % quantiles."""
    v = sorted(values)
    n = len(v)
    expected, low, high = [], [], []
    for k in range(1, n + 1):
        cdf = [math.comb(i + 1, k) / math.comb(n, k) for i in range(n)]  # P(best <= v[i])
        pmf = [cdf[0]] + [cdf[i] - cdf[i - 1] for i in range(1, n)]
        expected.append(sum(p * x for p, x in zip(pmf, v)))
        low.append(next(x for c, x in zip(cdf, v) if c >= 0.05))
        high.append(next(x for c, x in zip(cdf, v) if c >= 0.95))
    return BudgetCurve(
        tuple(expected),
        tuple(low),
        tuple(high),
        share_within_2pct=sum(x >= 0.98 * v[-1] for x in v) / n,
        trials_to_1pct=3,
    )


def _lr_steps(lr: float, schedule: str) -> tuple[float, ...]:
    out = []
    for step in range(EPOCHS * STEPS):
        epoch = step // STEPS
        if schedule == "cosine":
            out.append(lr * 0.5 * (1 + math.cos(math.pi * epoch / EPOCHS)) + lr * 0.01)
        elif schedule == "step":
            out.append(lr * 0.3 ** (epoch // 3))
        elif schedule == "onecycle":
            t = step / (EPOCHS * STEPS - 1)
            up = 0.3
            out.append(
                lr / 25 + (lr - lr / 25) * (t / up)
                if t < up
                else lr * 0.5 * (1 + math.cos(math.pi * (t - up) / (1 - up))) + lr / 25e4
            )
        else:
            out.append(lr)
    return tuple(out)


def _result(
    name: str,
    rng: random.Random,
    *,
    lr_range: tuple[float, float],
    top: float,
    reevaluated: bool,
    tied: bool | None,
    p_value: float | None,
    importances: dict[str, float],
    param: str = "cosine",
    batch_sizes=(32, 64),
    n_trials: int = 14,
) -> OptimizerResult:
    trials = []
    best_lr = math.sqrt(lr_range[0] * lr_range[1])
    for number in range(n_trials):
        lr = math.exp(rng.uniform(math.log(lr_range[0]), math.log(lr_range[1])))
        distance = abs(math.log10(lr / best_lr))
        final = max(0.1, top - 0.12 * distance**2 + rng.gauss(0, 0.006))
        schedule = rng.choice(["constant", "cosine", "step", "onecycle"])
        status = Status.OK
        if number in (4, 9):
            status = Status.PRUNED
        elif number == 11 and lr > best_lr:
            status = Status.DIVERGED
        curve = _curve(rng, final, 1.6)
        if status is Status.PRUNED:
            curve = curve[:3]
        elif status is Status.DIVERGED:
            curve = curve[:1]
        trials.append(
            SearchedTrial(
                number=number,
                status=status,
                value=curve[-1] if status is Status.OK else None,
                last_val_accuracy=curve[-1],
                lr=lr,
                schedule=schedule,
                batch_size=batch_sizes[number % len(batch_sizes)],
                hyperparameters={"lr": lr, "schedule": schedule},
                val_curve=curve,
            )
        )
    trials.append(
        SearchedTrial(
            number=n_trials,
            status=Status.FAILED,
            value=None,
            last_val_accuracy=None,
            lr=None,
            schedule="constant",
            batch_size=batch_sizes[0],
        )
    )
    scored = [t for t in trials if t.value is not None]
    best = max(scored, key=lambda t: t.value)
    best = SearchedTrial(**{**best.__dict__, "schedule": param})
    trials = [best if t.number == best.number else t for t in trials]
    reevals = ()
    test = None
    if reevaluated:
        reevals = tuple(
            SeedRun(
                source_trial=best.number,
                seed=seed,
                status=Status.OK,
                val_accuracy=c[-1],
                test_accuracy=round(c[-1] - 0.004 + rng.gauss(0, 0.003), 4),
                val_curve=c,
                run_id=f"run{seed}",
            )
            for seed, c in ((s, _curve(rng, best.value, 1.6)) for s in (101, 102, 103))
        )
        accs = [r.test_accuracy for r in reevals]
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
        half = 4.303 * std / math.sqrt(len(accs))
        test = SeedStats(n=len(accs), mean=mean, std=std, ci_low=mean - half, ci_high=mean + half)
    counts = {s.value: sum(t.status is s for t in trials) for s in Status}
    return OptimizerResult(
        optimizer=name,
        counts=counts,
        best_trial=best.number,
        best_val_accuracy=best.value,
        best_hyperparameters={"lr": best.lr, "schedule": param, f"{param}.min_lr_factor": 0.031},
        trials=tuple(trials),
        reevals=reevals,
        test=test,
        tied=tied,
        p_value=p_value,
        budget=_budget([t.value if t.value is not None else 0.0 for t in trials]),  # unscored: 0, as budget_curve
        importances=importances,
        lr_per_step=_lr_steps(best.lr, param),
        steps_per_epoch=STEPS,
        train_seconds=round(rng.uniform(20, 60), 2),
        best_run_id="abc",
        model_uri="runs:/abc/model",
    )


def _pareto(results: tuple[OptimizerResult, ...]) -> tuple[ParetoFront, ...]:
    """A multi-objective search's fronts (``objectives=[val_accuracy,train_seconds]``): each ok
    trial's time grows with its accuracy, so every optimizer has a front of a few trials."""
    fronts = []
    for r in results:
        told = [(t, t.value, 5.0 + 40 * t.value**4 + t.number % 3) for t in r.trials if t.status is Status.OK]
        best = {
            t.number for t, acc, s in told if not any(a >= acc and x <= s and (a, x) != (acc, s) for _, a, x in told)
        }
        trials = tuple(
            ParetoTrial(t.number, {"val_accuracy": acc, "train_seconds": s}, t.hyperparameters, True, t.number in best)
            for t, acc, s in told
        )
        fronts.append(ParetoFront(r.optimizer, ("val_accuracy", "train_seconds"), trials))
    return tuple(fronts)


def make_comparison(state: str = "finished") -> Comparison:
    rng = random.Random(7)
    results = (
        _result(
            "adam",
            rng,
            lr_range=(1e-4, 3e-2),
            top=0.975,
            reevaluated=True,
            tied=True,
            p_value=None,
            importances={"lr": 0.71, "beta1": 0.18, "schedule": 0.11},
        ),
        _result(
            "momentum",
            rng,
            lr_range=(3e-3, 0.5),
            top=0.972,
            reevaluated=True,
            tied=True,
            p_value=0.41,
            importances={"lr": 0.52, "momentum": 0.33, "schedule": 0.1, "cosine.min_lr_factor": 0.05},
            param="onecycle",
        ),
        _result(
            "sgd",
            rng,
            lr_range=(1e-3, 1.0),
            top=0.93,
            reevaluated=False,
            tied=None,
            p_value=None,
            importances={},
            param="step",
        ),
    )
    return Comparison(
        name="digits-cmp",
        dataset="digits",
        model="simple_cnn",
        epochs=EPOCHS,
        trials=15,
        reeval_seeds=3,
        state=state,
        generated="2026-11-23T08:00:00+00:00",
        tie_rule="Welch's t-test against the top-ranked optimizer, p >= 0.05: tied",
        results=results,
        batch_sizes=(32, 64),
        settings={"sampler": "tpe", "pruner": "median", "tracking_uri": "http://me:hunter2@mlflow:5000"},
        pareto=_pareto(results),  # every figure is drawn, the Pareto sets' too
    )


class _Page(HTMLParser):
    """Every tag's attributes, to check what the page would load."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Comparison, ReportFiles]:
    comparison = make_comparison()
    return comparison, write_report(comparison, tmp_path_factory.mktemp("report") / "out")


@pytest.mark.slow  # draws the report's figures
def test_every_file_is_written(report):
    _, files = report
    assert files.folder.is_dir()
    for path in (files.html, files.csv, files.markdown, *files.plots.values()):
        assert path.is_file() and path.stat().st_size > 0, path
        assert path.parent == files.folder
    assert set(files.plots) == set(plots.FIGURES)


@pytest.mark.parametrize("name", list(plots.FIGURES))
@pytest.mark.slow  # draws the report's figures
def test_every_png_decodes_and_shows_something(report, name):
    _, files = report
    assert files.plots[name].read_bytes()[:8] == PNG_MAGIC
    image = imread(files.plots[name])
    height, width = image.shape[:2]
    assert 700 <= width <= 1300 and 300 <= height <= 1200, (width, height)  # a laptop screen's size
    rgb = (image[..., :3] * 255).astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(colours) > 50, f"{name}: {len(colours)} colours"


@pytest.mark.slow  # draws the report's figures
def test_html_is_one_self_contained_page(report):
    comparison, files = report
    html = files.html.read_text(encoding="utf-8")
    page = _parse(html)
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(plots.FIGURES)
    assert sorted(a["id"] for a in images) == sorted(f"fig-{n}" for n in plots.FIGURES)
    for attrs in images:
        assert attrs.get("alt")
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix)
        assert base64.b64decode(attrs["src"][len(prefix) :], validate=True)[:8] == PNG_MAGIC
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for key in ("src", "href", "srcset", "action", "data"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), f"<{tag} {key}={value[:40]!r}>"
    assert "url(" not in html and "@import" not in html
    for text in (comparison.name, comparison.dataset, comparison.model, comparison.tie_rule):
        assert escape(text) in html
    assert "hunter2" not in html  # a password in a setting is masked
    for spec in plots.FIGURES.values():
        assert escape(spec.caption) in html


@pytest.mark.slow  # draws the report's figures
def test_ties_are_marked_in_html_csv_and_markdown(report):
    comparison, files = report
    rows = {r["optimizer"]: r for r in csv.DictReader(files.csv.open(encoding="utf-8"))}
    assert list(rows) == [r.optimizer for r in comparison.results]
    assert rows["adam"]["tied"] == "best" and rows["adam"]["rank"] == "1"
    assert rows["momentum"]["tied"] == "not distinguishable" and rows["momentum"]["p_value"] == "0.410"
    assert rows["sgd"]["tied"] == "-" and rows["sgd"]["test_mean"] == "" and rows["sgd"]["rank"] == ""
    assert rows["adam"]["test_mean"] == f"{comparison.results[0].test.mean:.4f}"
    assert rows["sgd"]["pruned"] == "2" and rows["sgd"]["failed"] == "1"
    html = files.html.read_text(encoding="utf-8")
    assert html.count('class="tied"') == 1 and html.count('class="top"') == 1
    assert "not distinguishable with 3 seeds (p = 0.410)" in html
    md = files.markdown.read_text(encoding="utf-8")
    assert "not distinguishable with 3 seeds (p = 0.410)" in md
    for name in files.plots:
        assert f"![{name}]({name}.png)" in md


@pytest.mark.slow  # draws the report's figures
def test_rows_format_accuracies_to_four_decimals(report):
    comparison, _ = report
    rows = ranking_rows(comparison)
    top = rows[0].display()
    assert top["test accuracy"] == f"{comparison.results[0].test.mean:.4f} ± {comparison.results[0].test.std:.4f}"
    assert top["95 % CI"].count(".") == 2 and all(len(p.split(".")[1]) == 4 for p in top["95 % CI"].split(" – "))
    assert rows[2].display()["test accuracy"] == "-"


@pytest.mark.slow  # draws the report's figures
def test_data_is_escaped_everywhere(tmp_path):
    base = make_comparison()
    evil = OptimizerResult(
        **{
            **base.results[0].__dict__,
            "optimizer": "<script>alert(1)</script>",
            "best_hyperparameters": {"lr": 0.01, "schedule": "<img src=x onerror=alert(2)>"},
            "importances": {"$\\frac{$": 0.6, "lr": 0.4},
        }
    )  # not a formula in a figure
    comparison = Comparison(**{**base.__dict__, "name": "a<b>&c", "results": (evil, *base.results[1:])})
    files = write_report(comparison, tmp_path)
    assert set(files.plots) == set(plots.FIGURES)
    html = files.html.read_text(encoding="utf-8")
    assert "<script>" not in html and "<img src=x" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a&lt;b&gt;&amp;c" in html
    assert all(tag != "script" for tag, _ in _parse(html).tags)
    md = files.markdown.read_text(encoding="utf-8")
    assert "<script>" not in md and "<img src=x" not in md


def test_an_empty_comparison_still_writes_a_page(tmp_path):
    empty = Comparison(
        name="nothing-yet",
        dataset="digits",
        model="simple_cnn",
        epochs=3,
        trials=5,
        reeval_seeds=3,
        state="running",
        generated="2026-11-23T08:00:00+00:00",
        tie_rule="Welch's t-test",
        results=(),
    )
    files = write_report(empty, tmp_path / "r")
    assert files.plots == {}
    html = files.html.read_text(encoding="utf-8")
    assert "No results yet" in html and "partial results" in html
    assert "<img" not in html
    assert files.csv.read_text(encoding="utf-8").splitlines()[0].startswith("rank,optimizer,")
    assert "No results yet" in files.markdown.read_text(encoding="utf-8")


def test_a_running_sweep_is_labelled_partial():
    running = make_comparison(state="running")
    assert '<p class="partial">running: partial results' in html_page(running, ranking_rows(running), {})
    finished = make_comparison()
    assert "partial results" not in html_page(finished, ranking_rows(finished), {})


def test_an_optimizer_has_the_same_colour_in_every_report():
    full = make_comparison()
    fewer = Comparison(**{**full.__dict__, "results": full.results[1:]})

    def colour(comparison, optimizer):
        fig = plots.convergence(comparison)
        return next(line.get_color() for line in fig.axes[0].get_lines() if line.get_label().startswith(optimizer))

    assert colour(full, "sgd") == colour(fewer, "sgd") == plots.colors(["sgd"])["sgd"]
    assert colour(full, "momentum") == colour(fewer, "momentum")
    every = [*OPTIMIZERS, "mine", "theirs"]  # the whole registry in one report, and two from outside it
    assert len(set(plots.colors(every).values())) == len(every)


def test_convergence_falls_back_to_the_search_trial_when_not_reevaluated():
    fig = plots.convergence(make_comparison())
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["sgd (search trial, 1 seed)"].get_linestyle() == "--"
    assert lines["adam (3 seeds)"].get_linestyle() == "-"
    assert len(fig.axes[0].collections) == 2  # a band for each re-evaluated optimizer


def test_lr_sensitivity_colours_batch_sizes_and_hollows_non_ok_trials():
    comparison = make_comparison()
    fig = plots.lr_sensitivity(comparison)
    panels = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert len(panels) == len(comparison.results)
    points = {c.get_gid(): c for ax in panels for c in ax.collections}
    by_batch = {32: set(), 64: set()}
    for result in comparison.results:
        for t in result.trials:
            if t.last_val_accuracy is None:
                continue
            point = points[f"{result.optimizer}:{t.number}"]
            face = point.get_facecolor()
            assert (len(face) == 0 or face[0][3] == 0) == (t.status is not Status.OK), (result.optimizer, t)
            by_batch[t.batch_size].add(tuple(point.get_edgecolor()[0]))
    assert len(by_batch[32]) == len(by_batch[64]) == 1 and by_batch[32] != by_batch[64]
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels[:2] == ["batch size 32", "batch size 64"]
    single = plots.lr_sensitivity(Comparison(**{**comparison.__dict__, "batch_sizes": (32,)}))
    assert not any(text.get_text().startswith("batch size") for text in single.legends[0].get_texts())


def test_figures_with_nothing_to_draw_are_left_out():
    base = make_comparison()
    bare = Comparison(
        **{
            **base.__dict__,
            "results": tuple(
                OptimizerResult(**{**r.__dict__, "importances": {}, "budget": None, "lr_per_step": ()})
                for r in base.results
            ),
        }
    )
    assert plots.importances(bare) is None and plots.budget(bare) is None and plots.schedules(bare) is None
    assert plots.convergence(bare) is not None
    full = plots.importances(base)
    assert sorted(ax.get_title() for ax in full.axes if ax.get_title()) == ["adam", "momentum"]  # sgd has none


@pytest.mark.slow  # draws the report's figures
def test_without_figures_the_page_says_how_to_draw_them_and_old_pngs_go(tmp_path):
    comparison = make_comparison()
    drawn = write_report(comparison, tmp_path / "out")
    assert drawn.plots and all(p.is_file() for p in drawn.plots.values())
    files = write_report(comparison, tmp_path / "out", figures=False)
    assert files.plots == {} and not list((tmp_path / "out").glob("*.png"))  # none stale beside the page
    page = files.html.read_text()
    assert "<img" not in page and f"sweep report {comparison.name}" in page
    assert files.csv.read_text() == drawn.csv.read_text()  # the table is the same either way


@pytest.mark.slow  # draws the report's figures
def test_the_terminal_table_fits_100_columns_and_the_markdown_keeps_everything(report):
    """`sweep run` / `sweep report` print a compact ranking; comparison.md keeps all 12 columns."""
    from sweep.report.files import TABLE_COLUMNS, terminal_table

    comparison, files = report
    lines = terminal_table(comparison).splitlines()
    assert max(map(len, lines)) <= 100, lines
    assert lines[0].split()[:5] == ["rank", "optimizer", "test", "accuracy", "tied"]
    by_name = {line.split()[1]: line for line in lines[1:]}
    assert set(by_name) == {"adam", "momentum", "sgd"}
    assert by_name["adam"].split()[:5] == ["1", "adam", "0.9600", "±", "0.0016"] and " best " in by_name["adam"]
    assert "not dist. p=0.410" in by_name["momentum"] and by_name["sgd"].split()[:3] == ["-", "sgd", "-"]
    assert all(line.endswith("…") for line in lines[1:])  # the long hyperparameters are cut, visibly
    md = files.markdown.read_text(encoding="utf-8")
    assert "| " + " | ".join(TABLE_COLUMNS) + " |" in md and "cosine.min_lr_factor=0.031" in md
    wide = comparison.results[0]
    narrow = type(comparison)(
        **{**comparison.__dict__, "results": (type(wide)(**{**wide.__dict__, "best_hyperparameters": {"lr": 0.01}}),)}
    )
    assert terminal_table(narrow).splitlines()[1].endswith("lr=0.01")  # what fits is not cut


# --- ties and intervals with few seeds -----------------------------------------------------------


def few_seeds() -> Comparison:
    """The researcher's report: 2 seeds each, 50 points apart, and one row whose seeds scored the
    same; ranked and tested as ``collect.ranked`` does, by ``stats.rank_and_tie``."""
    from sweep.report.stats import rank_and_tie

    base = make_comparison()
    samples = {"adam": [0.97, 0.96], "momentum": [0.9, 0.9], "sgd": [0.20, 0.72]}
    by_name = {r.optimizer: r for r in base.results}
    results = tuple(
        dataclasses.replace(
            by_name[t.name],
            reevals=tuple(
                SeedRun(by_name[t.name].best_trial, seed, Status.OK, a, a) for seed, a in enumerate(samples[t.name], 1)
            ),
            test=t.stats,
            tied=t.tied,
            p_value=t.p_value,
        )
        for t in rank_and_tie(samples)
    )
    return dataclasses.replace(base, results=results, reeval_seeds=2)


def test_two_seeds_call_no_tie_and_say_why():
    rows = {row.optimizer: row for row in ranking_rows(few_seeds())}
    assert rows["adam"].display()["tied"] == "best"
    assert rows["sgd"].display()["tied"] == "n/a: 2 seeds (< 3)"  # was 'tied (p = 0.303)'
    assert rows["momentum"].display()["tied"] == "n/a: 2 seeds (< 3)"
    assert rows["sgd"].record()["tied"] == "n/a" and rows["sgd"].record()["p_value"] == ""
    from sweep.report.files import terminal_table

    table = terminal_table(few_seeds())
    assert "n/a (2 seeds)" in table and "tied" not in table.split("\n", 1)[1]


def test_a_zero_width_interval_is_never_shown_as_certainty():
    rows = {row.optimizer: row for row in ranking_rows(few_seeds())}
    same = rows["momentum"]
    assert same.display()["95 % CI"] == "– (2 identical seeds)"
    assert same.display()["test accuracy"] == "0.9000 (no spread)"  # not '0.9000 ± 0.0000'
    assert same.record()["ci95_low"] == same.record()["ci95_high"] == "" and same.record()["test_std"] == "0.0000"
    one = RankingRow(**{**same.__dict__, "test": SeedStats(n=1, mean=0.9, std=0.0, ci_low=0.9, ci_high=0.9)})
    assert (one.display()["test accuracy"], one.display()["95 % CI"]) == ("0.9000 (1 seed)", "– (1 seed)")
    assert one.record()["test_std"] == ""
    from sweep.report.build import parent_metrics

    logged = parent_metrics(next(r for r in few_seeds().results if r.optimizer == "momentum"))
    assert "test_accuracy_ci95_low" not in logged and logged["test_accuracy_std"] == 0.0


def test_the_tie_cell_names_whose_seeds_are_too_few_and_how_many_were_compared():
    base = few_seeds()
    rows = ranking_rows(base)
    top, other = rows[0], rows[1]
    three = SeedStats(n=3, mean=0.5, std=0.1, ci_low=0.3, ci_high=0.7)
    assert RankingRow(**{**other.__dict__, "test": three}).tie_label() == "n/a: best has 2 seeds (< 3)"
    seen = RankingRow(**{**other.__dict__, "test": three, "tie": "not distinguishable", "p_value": 0.2, "top_seeds": 5})
    assert seen.tie_label() == "not distinguishable with 3 and 5 seeds (p = 0.200)"
    assert top.tie_label() == "best"


@pytest.mark.slow  # writes the report's artifacts through MLflow
def test_the_parent_runs_tie_tag_says_what_the_table_says(tmp_path):
    from sweep.core.keys import Tag
    from sweep.report.build import publish
    from sweep.report.files import markdown_table

    comparison = few_seeds()
    files = write_report(comparison, tmp_path / "report", figures=False)
    tracker = _Tracker([r.optimizer for r in comparison.results])
    publish(tracker, comparison, files.folder, markdown_table(comparison), True, str(tmp_path / "artifacts"))
    labels = {row.optimizer: row.tie_label() for row in ranking_rows(comparison)}
    for optimizer, label in labels.items():
        assert tracker.logged[f"parent-{optimizer}"][1][Tag.TIED] == label
    assert tracker.logged["parent-sgd"][1][Tag.TIED] == "n/a: 2 seeds (< 3)"  # was 'true'


@pytest.mark.slow  # writes the report's artifacts through MLflow
def test_per_optimizer_summaries_are_logged_on_the_parents_only(tmp_path):
    """The report run carried every parent's summary again (``adam.best_val_accuracy``, ...): ~20
    single-bar charts on top of MLflow's chart view. Now a few sweep-level metrics, no optimizer's."""
    from sweep.report.build import parent_metrics, publish
    from sweep.report.files import markdown_table

    comparison = make_comparison()
    files = write_report(comparison, tmp_path / "report", figures=False)
    tracker = _Tracker([r.optimizer for r in comparison.results])
    publish(tracker, comparison, files.folder, markdown_table(comparison), True, str(tmp_path / "artifacts"))
    on_report = tracker.logged["report-run"][0]
    best_val = max(r.best_val_accuracy for r in comparison.results)
    assert on_report == {"best_test_accuracy_mean": comparison.results[0].test.mean, "best_val_accuracy": best_val}
    assert not any(m.startswith(f"{r.optimizer}.") for m in on_report for r in comparison.results)
    for r in comparison.results:
        assert tracker.logged[f"parent-{r.optimizer}"][0] == parent_metrics(r)
    assert (tmp_path / "artifacts" / "report-run" / "artifacts" / "report" / "report.html").is_file()


class _Tracker:
    """What ``publish`` writes, kept: run id -> (metrics, tags)."""

    uri, experiment_id = "sqlite:///unused.db", "1"

    def __init__(self, optimizers):
        self.optimizers = optimizers
        self.logged: dict[str, tuple[dict, dict]] = {}

    def sweep_run(self):
        return "report-run"

    def find_parent(self, optimizer):
        return f"parent-{optimizer}" if optimizer in self.optimizers else None

    def describe(self, run_id, metrics, tags, description, final):
        self.logged[run_id] = (dict(metrics), dict(tags))


# --- small multiples: no line, band or point hides another ---------------------------------------


def _panels(fig) -> list:
    """The data panels of a figure (the legend and super-labels are not axes)."""
    return [ax for ax in fig.axes if ax.get_title()]


@pytest.mark.parametrize("name", ["schedules", "budget", "lr_sensitivity"])
def test_one_panel_per_optimizer_on_shared_axes(name):
    """Studies share their sampler seed, so optimizers often try the same rate and schedule: on one
    axes their lines, bands and points lay exactly on top of each other."""
    comparison = make_comparison()
    fig = plots.FIGURES[name].draw(comparison)
    panels = _panels(fig)
    assert [ax.get_title().split(":")[0] for ax in panels] == [r.optimizer for r in comparison.results]
    for ax in panels[1:]:
        assert ax.get_shared_x_axes().joined(panels[0], ax) and ax.get_shared_y_axes().joined(panels[0], ax)
    if name == "lr_sensitivity":
        for ax, result in zip(panels, comparison.results):
            assert {c.get_gid().split(":")[0] for c in ax.collections} == {result.optimizer}
    else:
        assert all(len(ax.get_lines()) == 1 and len(ax.collections) <= 1 for ax in panels)  # one band at most


def test_schedules_log_axis_stays_within_four_decades_of_the_peak():
    comparison = make_comparison()  # momentum's one-cycle ends 25e4 below its peak (4e-6)
    assert min(comparison.results[1].lr_per_step) / max(comparison.results[1].lr_per_step) < 1e-5
    fig = plots.schedules(comparison)
    panels = _panels(fig)
    low, high = panels[0].get_ylim()
    assert panels[0].get_yscale() == "log" and math.log10(high / low) <= 4.1 and low >= plots.LR_FLOOR
    assert "cut at 0.0001" in fig.get_supylabel() and "peak" in fig.get_supylabel()
    assert panels[1].get_title() == f"momentum: onecycle, peak {max(comparison.results[1].lr_per_step):.3g}"


def test_the_budget_figure_says_unscored_trials_count_as_zero():
    comparison = make_comparison()
    fig = plots.budget(comparison)
    assert "pruned, diverged and failed trials count as accuracy 0" in fig.get_supxlabel()
    assert "unscored = 0" in fig.get_supylabel()
    for ax, result in zip(_panels(fig), comparison.results):
        unscored = sum(t.value is None for t in result.trials)
        assert ax.get_title().endswith(f"{unscored} of {len(result.trials)} unscored (= 0)")
    assert "count as accuracy 0" in plots.FIGURES["budget"].caption


# --- importances: by the table's names, never from a handful of trials ---------------------------


def test_importances_are_named_as_the_table_names_the_hyperparameters():
    from sweep.report.collect import shown_name

    assert shown_name("one_minus_beta1", {"lr", "beta1"}) == "beta1"
    assert shown_name("cosine.one_minus_decay", {"cosine.decay"}) == "cosine.decay"
    assert shown_name("one_minus_mine", {"one_minus_mine"}) == "one_minus_mine"  # a user's own name, kept
    assert shown_name("lr", {"lr"}) == "lr"


def test_importances_from_too_few_finished_trials_are_left_out_and_named():
    base = make_comparison()
    adam, momentum, sgd = base.results
    few = dataclasses.replace(momentum, importances={}, importance_trials=2)
    comparison = dataclasses.replace(
        base,
        results=(dataclasses.replace(adam, importance_trials=12), few, dataclasses.replace(sgd, importance_trials=0)),
    )
    fig = plots.importances(comparison)
    assert [ax.get_title() for ax in _panels(fig)] == ["adam (12 finished trials)"]
    assert fig.get_supxlabel() == "Left out, from fewer than 4 finished trials (not meaningful): momentum (2)."


@pytest.mark.slow  # fits fANOVA
def test_importances_of_a_study_come_under_the_table_names_and_need_four_finished_trials():
    import optuna

    from sweep.report.collect import importances
    from sweep.stores.studies import SweepStudy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(3):
        trial = study.ask()
        value = trial.suggest_float("lr", 1e-4, 1.0, log=True) + trial.suggest_float("one_minus_beta1", 1e-3, 0.5)
        study.tell(trial, value)
    assert importances(SweepStudy(study), {"lr", "beta1"}) == {}  # 3 finished trials: not meaningful
    study.enqueue_trial({"lr": 0.01, "one_minus_beta1": 0.1})
    trial = study.ask()
    study.tell(
        trial, trial.suggest_float("lr", 1e-4, 1.0, log=True) + trial.suggest_float("one_minus_beta1", 1e-3, 0.5)
    )
    assert set(importances(SweepStudy(study), {"lr", "beta1"})) == {"lr", "beta1"}


def test_the_page_says_why_importances_are_missing():
    base = make_comparison()
    few = tuple(dataclasses.replace(r, importances={}, importance_trials=2) for r in base.results)
    comparison = dataclasses.replace(base, results=few)
    pngs = {"convergence": None}  # markdown_text only names the figures drawn
    page = html_page(comparison, ranking_rows(comparison), {})
    assert "Parameter importances" not in page  # no figures drawn at all: nothing to explain
    from sweep.report.files import markdown_text

    text = markdown_text(comparison, ranking_rows(comparison), pngs)
    assert "Parameter importances: not drawn. Left out, from fewer than 4 finished trials" in text
    assert "adam (2), momentum (2), sgd (2)" in text
