"""The `abplatform` command line: a thin layer over the platform's verbs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

from abplatform.errors import AbplatformError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID
    from sqlalchemy import Connection, Engine

    from abplatform.config.models import ExperimentConfig
    from abplatform.progress import Progress
    from simulator.runner import SimulationResult
    from strategies.offline import OfflineReport


app = typer.Typer(
    name="abplatform",
    help="Experiments for recommendation strategies: define, simulate, analyse, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL (default: $ABPLATFORM_DATABASE_URL or sqlite:///abplatform.db).",
        show_default=False,
    ),
]
USAGE_ERROR = 2
T = TypeVar("T")


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160  # piped output: wide enough for the result tables
    return console


def _exit_with(error: AbplatformError, note: str | None = None) -> NoReturn:
    """Print `error: message`, one line per problem, the hint and a closing note; exit 2."""
    from rich.text import Text

    _console(stderr=True).print(Text.assemble(("error:", "bold red"), f" {error.message}"))
    for line in error.problems:
        print(line, file=sys.stderr)
    if error.hint:
        print(f"hint: {error.hint}", file=sys.stderr)
    if note:
        print(note, file=sys.stderr)
    raise typer.Exit(USAGE_ERROR)


def _fail(message: str, hint: str | None = None) -> NoReturn:
    """Exit on a usage mistake the CLI itself finds (a bad option value)."""
    _exit_with(AbplatformError(message, hint))


def _run(action: Callable[[], T], note: str | None = None) -> T:
    """Run a verb, turning the platform's errors into messages (plus `note`), no tracebacks."""
    try:
        return action()
    except AbplatformError as exc:
        _exit_with(exc, note)


def _run_with_progress(
    action: Callable[[Progress], T],
    labels: Mapping[str, str] | None = None,
    note: str | None = None,
) -> T:
    """`_run` with a progress bar on the terminal, taken down before any error is printed."""

    def tracked() -> T:
        with _ProgressBar(labels) as bar:
            return action(bar)

    return _run(tracked, note)


def _open(db: str | None) -> Engine:
    from abplatform.storage.db import open_database

    return _run(lambda: open_database(db))


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="Experiment YAML file.")]) -> None:
    """Check an experiment file; print one line per problem (exit 2 if any)."""
    from abplatform.config.loader import load_experiment

    config = _run(lambda: load_experiment(file))
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
) -> None:
    """Play the experiment in a synthetic shop and write everything to the database."""
    from abplatform.config.loader import load_experiment
    from simulator.runner import simulate as run_simulation

    config = _run(lambda: load_experiment(file))
    engine = _open(db)
    labels = {
        "world": "catalogue, users, history",
        "fit": "fitting strategies",
        "traffic": "experiment traffic (days)",
    }
    result = _run_with_progress(
        lambda progress: run_simulation(engine, config, users=users, seed=seed, progress=progress),
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
        "units",
        "exposures",
        "impressions",
        "clicks",
        "purchases",
        "revenue",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for key, tally in result.tallies.items():
        table.add_row(
            key,
            f"{tally.units:,}",
            f"{tally.exposures:,}",
            f"{tally.impressions:,}",
            f"{tally.clicks:,}",
            f"{tally.purchases:,}",
            f"{tally.revenue:,.2f}",
        )
    console = _console()
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
def train(
    file: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    db: DbOption = None,
    artifacts: Annotated[
        Path, typer.Option("--artifacts", help="Where versioned model artifacts are written.")
    ] = Path("artifacts"),
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
    """Fit every variant's strategy on the SQL history, print offline metrics, export artifacts."""
    from abplatform.config.loader import load_experiment
    from strategies.training import train_experiment

    config = _run(lambda: load_experiment(file))
    engine = _open(db)
    chosen = _history_catalog(config, catalog)
    report = _run_with_progress(
        lambda progress: train_experiment(
            engine,
            config,
            chosen,
            artifacts_dir=artifacts,
            progress=progress,
            seed=seed,
            holdout_per_user=holdout,
        )
    )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
        return
    _print_offline(report)
    _console(stderr=True).print(f"artifacts in {artifacts}", markup=False)


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
        _fail(f"--k must be whole numbers separated by commas (got {text!r})", hint="--k 10,50,100")
    if not ks or ks[0] < 1:
        _fail(f"--k must list positive cut-offs (got {text!r})", hint="--k 10,50,100")
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
        _fail(f"--test-fraction must be in (0, 1) (got {test_fraction!r})", hint="e.g. 0.2")
    if test is not None and split is not None:
        _fail("--test and --split exclude each other", hint="--test FILE holds out that file")
    if split not in (None, "random", "time"):
        _fail(f"unknown --split {split!r}", hint="use random or time")
    targets = None
    if events is not None:
        targets = [e.strip() for e in events.split(",") if e.strip()]
        unknown = [e for e in targets if e not in FEEDBACK_TYPES]
        if unknown or not targets:
            _fail(
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
    config = _run(lambda: load_experiment(file))
    engine = _open(db)
    chosen = _history_catalog(config, catalog)
    report = _run_with_progress(
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
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
        return
    _print_offline(report)


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
    console = _console()
    console.print(table)
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

    engine = _open(db)
    result = _run(lambda: run_analysis(engine, key, alpha=alpha, ranking=ranking))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return
    from reports.table import print_table

    print_table(result, _console())


def _write_report(engine: Engine, key: str, output: Path) -> None:
    from reports.analysis import analyze as run_analysis
    from reports.render import render_report

    result = _run(lambda: run_analysis(engine, key))
    page = render_report(result)
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    _console(stderr=True).print(f"wrote {output}", markup=False)


@app.command()
def report(
    key: Annotated[str, typer.Argument(help="Experiment key.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path(
        "report.html"
    ),
    db: DbOption = None,
) -> None:
    """Write a self-contained HTML report of the experiment."""
    _write_report(_open(db), key, output)


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
        _fail(
            "nothing to ingest",
            hint="pass --exposures/--events (experiment logs) and/or "
            "--items/--interactions/--users (catalogue and history)",
        )
    config = _run(lambda: load_experiment(file))
    engine = _open(db)
    target = catalog or config.catalog_name
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
            return ingest_logs(engine, config, exposures, events, also=load_shop if shop else None)
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

    summary = _run_with_progress(load, note="nothing was written")
    if summary is not None:
        print(
            f"{config.key}: {summary.exposures:,} exposures, {summary.events:,} new events "
            f"({summary.duplicate_events:,} duplicates skipped), {summary.units:,} units"
            + (
                f"; {summary.duplicate_exposures:,} exposures already stored were skipped"
                if summary.duplicate_exposures
                else ""
            )
        )
    for shop_summary in loaded:
        print(shop_summary.describe())


class _ProgressBar:
    """A rich progress bar fed as a `Progress` callback; shown on a terminal (stderr) only."""

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = _console(stderr=True)
        self.labels = labels or {}
        self.bar: RichProgress | None = (
            Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                TextColumn("{task.completed:,}/{task.total:,}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            if console.is_terminal
            else None
        )
        self.tasks: dict[str, TaskID] = {}
        self.started = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if not self.started:
            self.bar.start()
            self.started = True
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(self.labels.get(stage, stage), total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def stop(self) -> None:
        """Take the bar off the terminal (before an error message is printed)."""
        if self.bar is not None and self.started:
            self.bar.stop()
            self.started = False

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@app.command("list")
def list_experiments(db: DbOption = None) -> None:
    """List the experiments stored in the database."""
    from abplatform.storage.db import transaction
    from abplatform.storage.repository import list_experiments as stored

    engine = _open(db)
    with transaction(engine) as session:
        experiments = _run(lambda: stored(session))
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
    path = _run(lambda: example_path(name))
    print(path.read_text(encoding="utf-8"), end="")


@db_app.command("upgrade")
def db_upgrade(
    db: DbOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Run the schema migrations (Alembic) up to head."""
    from abplatform.storage.db import current_revision, make_engine, resolve_url, upgrade

    engine = _run(lambda: make_engine(db))
    _run(lambda: upgrade(engine, revision))
    print(f"{resolve_url(db)}: at revision {current_revision(engine)}")


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Print the schema revision the database is at."""
    from abplatform.storage.db import current_revision, make_engine

    engine = _run(lambda: make_engine(db))
    print(_run(lambda: current_revision(engine)) or "empty (no migrations applied)")


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes (default: the CPU count).",
        ),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys (development only).")
    ] = False,
) -> None:
    """Serve the assignment API with uvicorn (SIGTERM: stop accepting, flush, exit)."""
    import os

    import uvicorn

    from abplatform.storage.db import URL_ENV, resolve_url

    # One BLAS thread per process (read when NumPy loads, so before `_open` imports it):
    # the workers already share the cores, and multithreaded BLAS on a busy machine makes
    # a 16-row top-k several times slower.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    # The workers accept from one shared socket; libuv (uvloop) otherwise accepts every
    # pending connection at once, so one worker took most of 8 connections (100% vs 16%
    # CPU). One accept per turn spreads them.
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    engine = _open(db)  # migrate SQLite / fail early on an un-migrated PostgreSQL
    engine.dispose()
    os.environ[URL_ENV] = resolve_url(db)
    os.environ["ABPLATFORM_API_AUTH"] = "false" if no_auth else "true"
    if no_auth:
        _console(stderr=True).print(
            "[bold yellow]warning:[/] --no-auth: every client may assign, read and administer; "
            "never expose this server beyond a development machine",
            markup=True,
        )
    uvicorn.run(
        "abplatform.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        # One process per core: requests never wait on the database (writes are batched by
        # each process' writer thread), so the processes share the CPU, not a lock.
        workers=workers or os.cpu_count() or 1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )


keys_app = typer.Typer(help="API keys of the assignment API.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    scope: Annotated[
        list[str], typer.Option("--scope", help="assign, read or admin (repeatable).")
    ],
    name: Annotated[str, typer.Option(help="Who uses the key, e.g. web.")],
    db: DbOption = None,
) -> None:
    """Create a key and print it once (only a salted hash is stored)."""
    from abplatform.keys import create_key
    from abplatform.storage.db import transaction

    engine = _open(db)
    with transaction(engine) as session:
        new = _run(lambda: create_key(session, name, scope))
    _console(stderr=True).print(
        f"created key {new.key_id} ({new.name}: {' '.join(new.scopes)}); "
        "store it now, it cannot be shown again",
        markup=False,
    )
    print(new.plain)


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """List keys (id, name, scopes, created, revoked), never their secrets."""
    from abplatform.keys import list_keys
    from abplatform.storage.db import transaction

    with transaction(_open(db)) as session:
        for row in list_keys(session):
            revoked = row.revoked_at.isoformat() if row.revoked_at else "-"
            print(
                f"{row.key_id}\t{row.name}\t{row.scopes}\t{row.created_at.isoformat()}\t{revoked}"
            )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (second part of abp_ID_SECRET).")],
    db: DbOption = None,
) -> None:
    """Revoke a key (servers forget cached keys within a minute)."""
    from abplatform.keys import revoke_key
    from abplatform.storage.db import transaction

    with transaction(_open(db)) as session:
        found = revoke_key(session, key_id)
    if not found:
        _fail(f"no key {key_id!r}", hint="see `abplatform keys list`")
    print(f"revoked {key_id}")


@app.command()
def power(
    baseline: Annotated[float, typer.Option(help="Control's proportion or mean.")],
    mde: Annotated[float, typer.Option(help="Minimum detectable effect (relative by default).")],
    alpha: Annotated[float, typer.Option(help="Two-sided significance level.")] = 0.05,
    power: Annotated[float, typer.Option("--power", help="Chance to detect the effect.")] = 0.8,
    metric_type: Annotated[
        str, typer.Option("--metric-type", help="proportion or mean.")
    ] = "proportion",
    sd: Annotated[
        float | None, typer.Option(help="Per-unit standard deviation (mean metrics).")
    ] = None,
    absolute: Annotated[
        bool, typer.Option("--absolute", help="--mde is an absolute difference.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Units needed per variant to detect an effect (two-sided test, two equal variants)."""
    from reports.power import units_per_variant

    if metric_type not in ("proportion", "mean"):
        _fail(f"unknown --metric-type {metric_type!r}", hint="use proportion or mean")
    try:
        result = units_per_variant(
            baseline,
            mde,
            alpha=alpha,
            power=power,
            metric_type="mean" if metric_type == "mean" else "proportion",
            sd=sd,
            absolute=absolute,
        )
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return
    kind = "absolute" if absolute else "relative"
    print(
        f"{result.units_per_variant:,} units per variant ({2 * result.units_per_variant:,} "
        f"in total) to detect {result.baseline:g} -> {result.target:.6g} ({kind} mde {mde:g}) "
        f"with power {power:g} at two-sided alpha {alpha:g}"
    )


@app.command()
def selfcheck(
    replications: Annotated[
        int, typer.Option(min=10, help="Monte Carlo replications per scenario.")
    ] = 10_000,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 2026,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure false-positive rates, coverage, peeking, CUPED and FWER by Monte Carlo."""
    from reports.selfcheck import format_table, run_selfcheck

    result = run_selfcheck(replications=replications, seed=seed)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        print(format_table(result))
    if not result.passed:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        print(
            "interrupted; nothing was half-written (each command is one transaction)",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
