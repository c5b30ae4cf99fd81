"""Whether this process found the database reachable lately, and bounded database calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from abplatform.errors import DatabaseUnavailable
from abplatform.storage.db import is_unavailable

T = TypeVar("T")

# After a failed database call, calls in the next second answer 503 at once instead of each
# waiting for its own connect timeout; the next call after that tries the database again.
RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached now (it may answer later)."""
    return isinstance(exc, DatabaseUnavailable | PoolTimeout) or (
        isinstance(exc, DBAPIError) and is_unavailable(exc)
    )


class DatabaseHealth:
    """Since when the database has not answered this process (None: it answers)."""

    def __init__(self, wait_seconds: float, retry_seconds: float = RETRY_SECONDS) -> None:
        self.wait_seconds = wait_seconds
        self.retry_seconds = retry_seconds
        self.unreachable_since: float | None = None  # wall-clock time of the first failure
        self._failed_at = 0.0  # monotonic time of the last failure

    @property
    def unreachable(self) -> bool:
        """Whether the last database call of this process failed for want of the database."""
        return self.unreachable_since is not None

    def failed(self, exc: BaseException | None = None) -> None:
        """Note a call that failed because the database is away."""
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
            log.warning("the database is unreachable: %s", _describe(exc))
        self._failed_at = time.monotonic()

    def answered(self) -> None:
        """Note a call the database answered."""
        if self.unreachable_since is not None:
            down = time.time() - self.unreachable_since
            log.warning("the database answers again (unreachable for %.1f s)", down)
        self.unreachable_since = None

    def check(self) -> None:
        """Raise DatabaseUnavailable at once if a call failed less than a retry period ago."""
        if self.unreachable and time.monotonic() - self._failed_at < self.retry_seconds:
            raise self.error()

    def error(self, exc: BaseException | None = None) -> DatabaseUnavailable:
        """The 503 answered while the database is away."""
        cause = _describe(exc) if exc is not None else "it failed less than a second ago"
        return DatabaseUnavailable(f"the database is unreachable ({cause})")

    async def call(self, work: Callable[[], T], *, bounded: bool = True) -> T:
        """`work()` in a thread, unless a call failed a moment ago (`check`); see `wait`."""
        self.check()
        return await self.wait(asyncio.to_thread(work), bounded=bounded)

    async def wait(self, pending: Awaitable[T], *, bounded: bool = True) -> T:
        """`pending` (database work in a thread), waited for at most `wait_seconds` if
        `bounded`; DatabaseUnavailable if the database is away (a thread that timed out
        finishes on its own, its result unused)."""
        try:
            result = await asyncio.wait_for(pending, self.wait_seconds if bounded else None)
        except TimeoutError as exc:
            self.failed(exc)
            raise self.error(exc) from None
        except Exception as exc:
            if unavailable(exc):
                self.failed(exc)
                raise self.error(exc) from None
            raise
        self.answered()
        return result


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if isinstance(exc, TimeoutError):
        return "no answer within the wait bound"
    orig = getattr(exc, "orig", None)
    return type(orig if orig is not None else exc).__name__
