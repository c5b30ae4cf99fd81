"""The progress callback long-running verbs report to: `progress(stage, done, total)`."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): `done` of `total` steps of the named stage are finished."""


def no_progress(stage: str, done: int, total: int) -> None:
    """The default callback: report nothing."""
    return None
