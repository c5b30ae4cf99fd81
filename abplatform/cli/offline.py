"""Commands that fit strategies on the history, score them offline and export them: train,
evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from abplatform.config.models import ExperimentConfig
    from strategies.offline import OfflineReport

from abplatform.cli.base import DbOption, app, fail, make_console, open_db, run_tracked, run_verb


@app.command()
def train(
    file: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    db: DbOption = None,
    artifacts: Annotated[
        Path | None,
        typer.Option(
            "--artifacts",
            help="Where versioned model artifacts are written "
            "(default: $ABPLATFORM_ARTIFACTS, else ./artifacts).",
        ),
    ] = None,
    catalog: Annotated[
        str | None,
        typer.Option(help="Catalogue to train on (default: the simulated one, else `catalog:`)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, help="Default: simulation.seed, else 0.")
    ] = None,
    holdout: Annotated[int, typer.Option(min=1, help="New items held out per user.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Fit every variant's strategy on the SQL history, print offline metrics, export artifacts
    and register each variant's as a candidate model (`abplatform models list`)."""
    from abplatform.artifacts import default_artifacts_dir
    from abplatform.config.loader import load_experiment
    from strategies.training import train_experiment

    config = run_verb(lambda: load_experiment(file))
    engine = open_db(db)
    chosen = _history_catalog(config, catalog)
    root = artifacts if artifacts is not None else default_artifacts_dir()
    report = run_tracked(
        lambda progress: train_experiment(
            engine,
            config,
            chosen,
            artifacts_dir=root,
            progress=progress,
            seed=seed,
            holdout_per_user=holdout,
        )
    )
    _show(report, as_json)
    if not as_json:
        console = make_console(stderr=True)
        console.print(f"artifacts in {root}", markup=False)
        registered = [r for r in report.results if r.model_id is not None]
        if registered:
            console.print(
                "registered candidates: "
                + ", ".join(f"{r.name} = model {r.model_id} (v{r.version})" for r in registered)
                + "; serve one with `abplatform models promote ID`",
                markup=False,
            )
        for name, reason in report.unregistered.items():
            console.print(f"not registered: {name} ({reason})", markup=False)


def _history_catalog(config: ExperimentConfig, catalog: str | None) -> str:
    """The catalogue whose history `train` and `evaluate` use: --catalog, else the simulated
    one if the file has a `simulation:` block, else the file's `catalog:` (or "default")."""
    from simulator.runner import simulation_catalog

    if catalog:
        return catalog
    return simulation_catalog(config) if config.simulation is not None else config.catalog_name


def _cutoffs(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        fail(f"--k must be whole numbers separated by commas (got {text!r})", hint="--k 10,50,100")
    if not ks or ks[0] < 1:
        fail(f"--k must list positive cut-offs (got {text!r})", hint="--k 10,50,100")
    return ks


@app.command()
def evaluate(
    file: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    db: DbOption = None,
    test: Annotated[
        Path | None,
        typer.Option(
            "--test",
            help="Held-out interactions CSV (user_id, item_id, timestamp[, type, value]); "
            "the stored history is then all training data.",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="random (distinct user-item pairs) or time (latest interactions)."),
    ] = None,
    test_fraction: Annotated[
        float, typer.Option(help="Share held out by --split, in (0, 1).")
    ] = 0.2,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split and the strategies.")] = 42,
    k: Annotated[str, typer.Option("--k", help="Cut-offs, comma-separated.")] = "10,50,100",
    include_seen: Annotated[
        bool,
        typer.Option(
            "--include-seen", help="Keep items the user met in training in the top-K (TFRS)."
        ),
    ] = False,
    events: Annotated[
        str | None,
        typer.Option(help="Held-out types that count, comma-separated (default: all)."),
    ] = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            help="Catalogue to evaluate on (default: the simulated one, else `catalog:`)."
        ),
    ] = None,
    baselines: Annotated[
        bool, typer.Option("--baselines/--no-baselines", help="Add popularity and random.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Compare every variant's strategy offline: hit, recall, NDCG, coverage @K on held-out data."""
    from abplatform.config.loader import load_experiment
    from abplatform.domain import FEEDBACK_TYPES
    from strategies.offline import evaluate_offline
    from strategies.splits import RandomSplit, TestFile, TimeSplit

    ks = _cutoffs(k)
    if not 0.0 < test_fraction < 1.0:
        fail(f"--test-fraction must be in (0, 1) (got {test_fraction!r})", hint="e.g. 0.2")
    if test is not None and split is not None:
        fail("--test and --split exclude each other", hint="--test FILE holds out that file")
    if split not in (None, "random", "time"):
        fail(f"unknown --split {split!r}", hint="use random or time")
    targets = None
    if events is not None:
        targets = [e.strip() for e in events.split(",") if e.strip()]
        unknown = [e for e in targets if e not in FEEDBACK_TYPES]
        if unknown or not targets:
            fail(
                f"unknown --events {', '.join(unknown) or events!r}",
                hint=f"use some of: {', '.join(FEEDBACK_TYPES)}",
            )
    chosen_split = (
        TestFile(test)
        if test is not None
        else TimeSplit(test_fraction)
        if split == "time"
        else RandomSplit(test_fraction, seed)
    )
    config = run_verb(lambda: load_experiment(file))
    engine = open_db(db)
    chosen = _history_catalog(config, catalog)
    report = run_tracked(
        lambda progress: evaluate_offline(
            config,
            engine,
            split=chosen_split,
            catalog=chosen,
            ks=ks,
            include_seen=include_seen,
            baselines=baselines,
            seed=seed,
            target_events=targets,
            progress=progress,
        )
    )
    _show(report, as_json)


def _show(report: OfflineReport, as_json: bool) -> None:
    """The report as JSON, or as the metrics table and a line on the split."""
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        _print_offline(report)


def _print_rankers(report: OfflineReport) -> None:
    """Each trained ranker's AUC, log loss and ECE per head beside its peers on the same
    features (logistic regression, LightGBM), and which peer beats it where."""
    from rich.table import Table

    from strategies.ranker.peers import LIGHTGBM_MISSING
    from strategies.ranker.report import HEADS, MODELS

    console = make_console()
    metrics = ("auc", "log_loss", "ece")
    for quality in report.rankers:
        if quality.fallback is not None:
            console.print(f"ranker of {quality.variant}: fell back ({quality.fallback})")
            continue
        table = Table(
            title=f"Ranker of {quality.variant}: {quality.impressions:,} impressions, "
            f"{quality.holdout_rows:,} on the time-ordered holdout"
        )
        table.add_column("model")
        for head in HEADS:
            for metric in metrics:
                table.add_column(f"{head}\n{metric}", justify="right")
            table.add_column(f"{head}\nrows", justify="right")
        for model in MODELS:
            heads = quality.heads.get(model)
            if heads is None:
                table.add_row(model, LIGHTGBM_MISSING if model == "lightgbm" else "-")
                continue
            cells = []
            for head in HEADS:
                cells += [_fmt4(getattr(heads[head], metric)) for metric in metrics]
                cells.append(str(heads[head].rows))
            table.add_row(model, *cells)
        console.print(table)
        for peer, head, theirs, ours in quality.peers_ahead():
            console.print(
                f"{peer} beats the ranker of {quality.variant} on the {head} head: "
                f"holdout AUC {theirs:.4f} against {ours:.4f}",
                markup=False,
            )


def _print_offline(report: OfflineReport) -> None:
    """The metrics table of `train` and `evaluate`, then what the split held out."""
    from rich.table import Table

    seen = "seen items kept" if report.include_seen else "seen items excluded"
    table = Table(title=f"Offline evaluation on catalogue {report.catalog!r} ({seen})")
    table.add_column("metric")
    for result in report.results:
        table.add_column(f"{result.name}\n({result.kind})", justify="right")
    for name in report.metric_names():
        table.add_row(name, *[_fmt4(r.metrics.get(name)) for r in report.results])
    table.add_row("fit seconds", *[f"{r.fit_seconds:.2f}" for r in report.results])
    table.add_row("serve seconds", *[f"{r.serve_seconds:.2f}" for r in report.results])
    table.add_row("serve ms/user", *[f"{r.serve_ms_per_user:.3f}" for r in report.results])
    if any(r.model_id is not None for r in report.results):  # `train` registered them
        ids = [f"{r.model_id} (v{r.version})" if r.model_id else "-" for r in report.results]
        table.add_row("model id (version)", *ids)
    console = make_console()
    console.print(table)
    _print_rankers(report)
    split = report.split
    console.print(
        f"split: {split.description}; {split.train_interactions:,} training and "
        f"{split.test_interactions:,} held-out interactions; {split.test_pairs:,} held-out "
        f"user-item pairs of {split.test_users:,} users ({split.cold_users:,} cold, served "
        f"by each strategy's cold-start path); {split.seen_pairs_dropped:,} pairs already "
        "met in training dropped",
        markup=False,
    )
    if report.skipped:
        console.print(f"variants without a strategy: {', '.join(report.skipped)}", markup=False)


def _fmt4(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"
