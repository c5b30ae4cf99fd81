"""The CLI's plumbing: the Typer apps, consoles, the one error renderer and the progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

from abplatform.errors import AbplatformError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID
    from sqlalchemy import Engine

    from abplatform.progress import Progress


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


keys_app = typer.Typer(help="API keys of the assignment API.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160  # piped output: wide enough for the result tables
    return console


def exit_with(error: AbplatformError, note: str | None = None) -> NoReturn:
    """Print `error: message`, one line per problem, the hint and a closing note; exit 2."""
    from rich.text import Text

    make_console(stderr=True).print(Text.assemble(("error:", "bold red"), f" {error.message}"))
    for line in error.problems:
        print(line, file=sys.stderr)
    if error.hint:
        print(f"hint: {error.hint}", file=sys.stderr)
    if note:
        print(note, file=sys.stderr)
    raise typer.Exit(USAGE_ERROR)


def fail(message: str, hint: str | None = None) -> NoReturn:
    """Exit on a usage mistake the CLI itself finds (a bad option value)."""
    exit_with(AbplatformError(message, hint))


def run_verb(action: Callable[[], T], note: str | None = None) -> T:
    """Run a verb, turning the platform's errors into messages (plus `note`), no tracebacks."""
    try:
        return action()
    except AbplatformError as exc:
        exit_with(exc, note)


def run_tracked(
    action: Callable[[Progress], T],
    labels: Mapping[str, str] | None = None,
    note: str | None = None,
) -> T:
    """`run_verb` with a progress bar on the terminal, taken down before any error is printed."""

    def tracked() -> T:
        with ProgressBar(labels) as bar:
            return action(bar)

    return run_verb(tracked, note)


def open_db(db: str | None) -> Engine:
    """The engine of `--db` (migrating SQLite), or a clean exit naming the problem."""
    from sqlalchemy.exc import DBAPIError

    from abplatform.storage.db import open_database, resolve_url

    try:
        return run_verb(lambda: open_database(db))
    except DBAPIError as exc:  # unreachable, no such database, refused login
        from sqlalchemy.engine import make_url

        where = make_url(resolve_url(db)).render_as_string(hide_password=True)
        first = str(exc.orig or exc).strip().splitlines()[0]
        exit_with(
            AbplatformError(
                f"cannot open the database {where}: {first}",
                hint="check --db (or ABPLATFORM_DATABASE_URL) and that the server is up",
            )
        )


class ProgressBar:
    """A rich progress bar fed as a `Progress` callback; shown on a terminal (stderr) only."""

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = make_console(stderr=True)
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

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
