"""Errors that carry a hint telling the user what to do next, and the problems found."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class AbplatformError(Exception):
    """Base error: a message, an optional hint, and one line per problem found (maybe none)."""

    def __init__(self, message: str, hint: str | None = None, problems: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems: list[str] = list(problems)

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\nhint: {self.hint}"


class UnknownNameError(AbplatformError):
    """A name (strategy kind, experiment key, ...) that is not known."""


class NotFoundError(AbplatformError):
    """A stored object that does not exist."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with an experiment config: where, what, and the offending value."""

    path: str
    message: str
    got: Any = None
    has_got: bool = True

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if not self.has_got:
            return f"{where}: {self.message}"
        return f"{where}: {self.message} (got {_show(self.got)})"


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, dict | list):
        import yaml  # only when a config problem is shown: keeps this module light

        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text if len(text) <= 80 else text[:77] + "..."


class ConfigError(AbplatformError):
    """An experiment config with problems, one line each: `path.to.field: what (got X)`."""

    def __init__(self, problems: Sequence[ConfigProblem], source: str | None = None) -> None:
        head = f"{source}: " if source else ""
        plural = "s" if len(problems) != 1 else ""
        super().__init__(
            f"{head}{len(problems)} problem{plural} in the experiment config",
            problems=(str(problem) for problem in problems),
        )
        self.source = source


class DataError(AbplatformError):
    """Input data (CSV rows, history) that cannot be used; lists the bad rows."""

    def __init__(self, message: str, problems: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.problems = problems


# The buffered writer's refusals (`abplatform.writer`); the API answers them 503 + Retry-After.


class WriterFull(AbplatformError):
    """The write queue is at its bound; the client should retry later."""


class WriteFailed(AbplatformError):
    """The database refused the rows (rolled back, nothing written); the client may retry."""


class WriterClosed(AbplatformError):
    """The writer is shutting down and accepts no more rows."""


class DatabaseUnavailable(AbplatformError):
    """The database cannot be reached, or is locked past the wait bound; retry later.

    Nothing of the request was written (a failed transaction writes nothing). The API
    answers 503 + Retry-After with a JSON body.
    """
