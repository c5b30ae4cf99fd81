"""Commands over an experiment: validate, simulate, analyze, report, ingest, list, examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from abplatform.progress import Progress
    from simulator.runner import SimulationResult

from abplatform.cli.base import DbOption, app, fail, make_console, open_db, run_tracked, run_verb


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="Experiment YAML file.")]) -> None:
    """Check an experiment file; print one line per problem (exit 2 if any)."""
    from abplatform.config.loader import load_experiment

    config = run_verb(lambda: load_experiment(file))
    print(f"{file}: ok ({len(config.variants)} variants, {len(config.metrics)} metrics)")


@app.command()
def simulate(
    file: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    db: DbOption = None,
    users: Annotated[int | None, typer.Option(min=2, help="Override simulation.users.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override simulation.seed.")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write the HTML report to this path.")
    ] = None,
    artifacts: Annotated[
        Path | None,
        typer.Option(
            "--artifacts",
            help="Where the served models' artifacts are written "
            "(default: $ABPLATFORM_ARTIFACTS, else ./artifacts).",
        ),
    ] = None,
) -> None:
    """Play the experiment in a synthetic shop and write everything to the database.

    Every variant's strategy is fitted, exported, registered as a candidate model and served
    from its artifact, as `abplatform serve` would; exposures record the model id.
    """
    from abplatform.config.loader import load_experiment
    from simulator.runner import simulate as run_simulation

    config = run_verb(lambda: load_experiment(file))
    engine = open_db(db)
    labels = {
        "world": "catalogue, users, history",
        "fit": "fitting strategies",
        "logging": "logging period (days)",
        "traffic": "experiment traffic (days)",
    }
    result = run_tracked(
        lambda progress: run_simulation(
            engine, config, users=users, seed=seed, progress=progress, artifacts_dir=artifacts
        ),
        labels,
    )
    _print_simulation(result)
    if report is not None:
        _write_report(engine, config.key, report)


def _print_simulation(result: SimulationResult) -> None:
    from rich.table import Table

    table = Table(title=f"Simulated {result.experiment} (run {result.run_id}, seed {result.seed})")
    for column in (
        "variant",
        "model",
        "units",
        "exposures",
        "impressions",
        "clicks",
        "purchases",
        "revenue",
    ):
        table.add_column(column, justify="left" if column in ("variant", "model") else "right")
    for key, tally in result.tallies.items():
        model = result.models.get(key)
        table.add_row(
            key,
            "fitted in memory" if model is None else f"{model.id} (v{model.version})",
            f"{tally.units:,}",
            f"{tally.exposures:,}",
            f"{tally.impressions:,}",
            f"{tally.clicks:,}",
            f"{tally.purchases:,}",
            f"{tally.revenue:,.2f}",
        )
    console = make_console()
    console.print(table)
    truth = Table(title="Ground truth (expected value over the whole population)")
    truth.add_column("metric")
    variants = list(result.tallies)
    for key in variants:
        truth.add_column(key, justify="right")
    for metric, values in result.ground_truth.items():
        truth.add_row(metric, *[_fmt(values.get(v)) for v in variants])
    console.print(truth)
    console.print(
        f"{result.users:,} users, {result.items:,} items, "
        f"{result.history_interactions:,} history interactions"
    )
    for line in result.notes:
        console.print(line)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


@app.command()
def analyze(
    key: Annotated[str, typer.Argument(help="Experiment key.")],
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    alpha: Annotated[
        float | None,
        typer.Option(
            min=1e-6, max=0.5, help="Significance level (default: the config's analysis.alpha)."
        ),
    ] = None,
    ranking: Annotated[
        bool, typer.Option("--ranking/--no-ranking", help="Include online ranking quality.")
    ] = True,
) -> None:
    """Significance of every metric, each variant against the control, plus an SRM check."""
    from reports.analysis import analyze as run_analysis

    engine = open_db(db)
    result = run_verb(lambda: run_analysis(engine, key, alpha=alpha, ranking=ranking))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return
    from reports.table import print_table

    print_table(result, make_console())


def _write_report(engine: Engine, key: str, output: Path) -> None:
    from reports.analysis import analyze as run_analysis
    from reports.render import render_report

    result = run_verb(lambda: run_analysis(engine, key))
    page = render_report(result)
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    make_console(stderr=True).print(f"wrote {output}", markup=False)


@app.command()
def report(
    key: Annotated[str, typer.Argument(help="Experiment key.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path(
        "report.html"
    ),
    db: DbOption = None,
) -> None:
    """Write a self-contained HTML report of the experiment."""
    _write_report(open_db(db), key, output)


def _stored_catalog(engine: Engine, key: str) -> str | None:
    """The catalogue a stored experiment uses (kept when the YAML names none)."""
    from abplatform.storage.db import transaction
    from abplatform.storage.repository import stored_catalog

    with transaction(engine) as session:
        return stored_catalog(session, key)


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="Experiment YAML file the data belongs to.")],
    exposures: Annotated[
        Path | None, typer.Option(help="CSV: unit_id, variant, timestamp[, propensity, ...]")
    ] = None,
    events: Annotated[
        Path | None, typer.Option(help="CSV: unit_id, type, timestamp[, event_id, item_id, value]")
    ] = None,
    items: Annotated[
        Path | None,
        typer.Option(help="CSV: item_id[, category, brand, price, title, tags (a|b|c)]"),
    ] = None,
    interactions: Annotated[
        Path | None, typer.Option(help="CSV: user_id, item_id, timestamp[, type, value]")
    ] = None,
    users: Annotated[Path | None, typer.Option(help="CSV: user_id[, any profile columns]")] = None,
    catalog: Annotated[
        str | None, typer.Option(help="Catalogue to load into (default: the file's `catalog:`).")
    ] = None,
    db: DbOption = None,
) -> None:
    """Load real logs, catalogue, users and history (all files or nothing)."""
    from abplatform.catalog_ingest import CatalogIngestSummary, ingest_catalog, load_catalog_files
    from abplatform.config.loader import load_experiment
    from abplatform.ingest import IngestSummary, ingest_logs

    logs = exposures is not None or events is not None
    shop = items is not None or interactions is not None or users is not None
    if not logs and not shop:
        fail(
            "nothing to ingest",
            hint="pass --exposures/--events (experiment logs) and/or "
            "--items/--interactions/--users (catalogue and history)",
        )
    config = run_verb(lambda: load_experiment(file))
    engine = open_db(db)
    target = catalog or config.catalog or _stored_catalog(engine, config.key) or "default"
    loaded: list[CatalogIngestSummary] = []

    def load(progress: Progress) -> IngestSummary | None:
        def load_shop(conn: Connection) -> None:
            loaded.append(
                load_catalog_files(
                    conn,
                    target,
                    items=items,
                    interactions=interactions,
                    users=users,
                    progress=progress,
                )
            )

        if logs:
            return ingest_logs(
                engine, config, exposures, events, catalog=target, also=load_shop if shop else None
            )
        loaded.append(
            ingest_catalog(
                engine,
                target,
                items=items,
                interactions=interactions,
                users=users,
                progress=progress,
            )
        )
        return None

    summary = run_tracked(load, note="nothing was written")
    if summary is not None:
        print(
            f"{config.key}: {summary.exposures:,} exposures, {summary.events:,} new events "
            f"({summary.duplicate_events:,} duplicates skipped), {summary.units:,} units"
            + (
                f"; feature store: {summary.featured_events:,} events applied, "
                f"{summary.unfeatured_events:,} left out (unknown item or unit)"
                if summary.events
                else ""
            )
            + (
                f"; {summary.duplicate_exposures:,} exposures already stored were skipped"
                if summary.duplicate_exposures
                else ""
            )
        )
    for shop_summary in loaded:
        print(shop_summary.describe())


@app.command("list")
def list_experiments(db: DbOption = None) -> None:
    """List the experiments stored in the database."""
    from abplatform.storage.db import transaction
    from abplatform.storage.repository import list_experiments as stored

    engine = open_db(db)
    with transaction(engine) as session:
        experiments = run_verb(lambda: stored(session))
    if not experiments:
        print("no experiments yet; try: abplatform simulate examples/homepage_popularity.yaml")
    for item in experiments:
        variants = ", ".join(v.key for v in item.config.variants)
        print(f"{item.key}\t{item.status}\t{variants}\t{item.config.description}")


@app.command()
def examples(
    name: Annotated[
        str | None, typer.Argument(help="Print this example's YAML instead of the list.")
    ] = None,
) -> None:
    """List the bundled example experiments (name and file), or print one's YAML."""
    from abplatform.examples import example_names, example_path

    if name is None:
        for each in example_names():
            print(f"{each}\t{example_path(each)}")
        return
    path = run_verb(lambda: example_path(name))
    print(path.read_text(encoding="utf-8"), end="")
