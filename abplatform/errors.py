"""Errors that carry a hint telling the user what to do next."""

from __future__ import annotations


class AbplatformError(Exception):
    """Base error: a message plus an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\nhint: {self.hint}"


class UnknownNameError(AbplatformError):
    """A name (strategy kind, experiment key, ...) that is not known."""


class NotFoundError(AbplatformError):
    """A stored object that does not exist."""


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
