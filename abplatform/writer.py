"""Buffered writer: exposures, impressions and events go to SQL in set-based group commits.

Two ways to hand rows over:

- `record(exposures)` (assignments): exposure ids come from blocks reserved up front, the
  rows are appended to this process' journal (when one is configured) and queued, and the
  ids return at once: no database round trip and no commit wait per request. Rows accepted
  this way are retried until the database takes them; if the process dies first, the
  journal is replayed (idempotently, by exposure id) at the next start-up.
- `submit(exposures, events)` (events): the returned future resolves after the
  transaction holding the rows has committed, so the answer can say how many events were
  new and how many duplicates (ON CONFLICT (event_id) DO NOTHING). `commit` awaits it for
  at most `commit_wait` seconds (the API's bound; see `commit`).

Lock waits: each transaction of the writer waits at most `lock_wait` seconds for a lock
(`storage.db.bounded_lock_wait`), less when a waiting submission's bound is nearer, so a
locked table fails the transaction (rolled back, retried or answered 503) instead of
holding the writer and its callers for as long as the lock is held.

One writer thread drains the queue every `flush_interval` seconds or `flush_rows` rows
(at once when a submission is waiting for its commit). The queue is bounded in rows; a
full queue raises `WriterFull` (HTTP 503 + Retry-After), it never drops rows.

This module holds the queue, the journal, the retries and the thread; the rows are encoded
and inserted by `storage.rows`, the one writer of exposures, impressions and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from abplatform.bandit import BanditFeedback
from abplatform.errors import DatabaseUnavailable, WriteFailed, WriterClosed, WriterFull
from abplatform.journal import Journal, Segment
from abplatform.storage.db import bounded_lock_wait, is_sqlite, is_unavailable
from abplatform.storage.exposure_ids import ExposureIds
from abplatform.storage.feature_signals import signal_changed, signal_path
from abplatform.storage.features import RECENT_LIMIT, Unfeatured, update_features
from abplatform.storage.rows import (
    EventRow,
    ExposureRow,
    write_events,
    write_exposures,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 200_000
DEFAULT_FLUSH_ROWS = 20_000
DEFAULT_FLUSH_INTERVAL = 0.005
# Accepted rows the database refuses for good (e.g. their experiment was deleted) are kept
# here, one JSON line per submission, instead of being retried forever.
REJECTED_FILE = "rejected.jsonl"
# Time kept free between a transaction's lock wait and its submission's bound: the commit
# and the answer.
COMMIT_MARGIN_SECONDS = 0.25
# The shortest lock wait worth a try: a lock released by then is taken.
MIN_LOCK_WAIT_SECONDS = 0.05


@dataclass(frozen=True)
class WriteResult:
    """What a submission wrote: exposure ids in order, new events, duplicate events, and
    of the new events those applied to the feature store and those not (with why)."""

    exposure_ids: tuple[int, ...]
    new_events: int
    duplicate_events: int
    featured_events: int = 0
    unfeatured: tuple[Unfeatured, ...] = ()


@dataclass(eq=False)
class _Job:
    exposures: Sequence[ExposureRow]
    exposure_ids: Sequence[int]
    events: Sequence[EventRow]
    # None: accepted (`record`), the rows must reach the database whatever happens.
    future: asyncio.Future[WriteResult] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    segment: Segment | None = None
    line: bytes = b""
    # When the caller stops waiting for the commit (time.monotonic(); inf: never).
    deadline: float = float("inf")
    retries: int = 0  # failed transient attempts of accepted rows
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = len(self.exposures) + len(self.events)


def _resolve(future: asyncio.Future[WriteResult], result: WriteResult | BaseException) -> None:
    if future.done():  # the request was cancelled (client gone); its rows are written anyway
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _sqlite_file(engine: Engine) -> Path | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database).resolve()


def journal_line(ids: Sequence[int], rows: Sequence[ExposureRow]) -> bytes:
    """One journal line: the exposures of a submission with their ids (JSON, no NUL byte)."""
    return (
        orjson.dumps(
            [
                [
                    exposure_id,
                    r.experiment_id,
                    r.variant,
                    r.unit_id,
                    r.ts,
                    r.propensity,
                    r.bucket,
                    r.scene,
                    r.context,
                    r.items,
                    r.weight_version,
                    r.model_id,
                    r.sources,
                ]
                for exposure_id, r in zip(ids, rows, strict=True)
            ]
        )
        + b"\n"
    )


def _decode(line: bytes) -> tuple[list[int], list[ExposureRow]]:
    ids: list[int] = []
    rows: list[ExposureRow] = []
    for item in orjson.loads(line):
        ids.append(int(item[0]))
        rows.append(
            ExposureRow(
                experiment_id=item[1],
                variant=item[2],
                unit_id=item[3],
                ts=datetime.fromisoformat(item[4]),
                propensity=item[5],
                bucket=item[6],
                scene=item[7],
                context=item[8],
                items=tuple(item[9]),
                weight_version=item[10] if len(item) > 10 else None,
                model_id=item[11] if len(item) > 11 else None,
                sources=tuple(item[12]) if len(item) > 12 and item[12] is not None else None,
            )
        )
    return ids, rows


def replay_journal(
    engine: Engine, lines: list[bytes], bandit: BanditFeedback | None = None
) -> None:
    """Insert the exposures of journal lines, skipping those already stored (one commit);
    with `bandit`, per-request bandit exposures count as trials (once, by exposure id)."""
    ids: list[int] = []
    rows: list[ExposureRow] = []
    for line in lines:
        line_ids, line_rows = _decode(line)
        ids += line_ids
        rows += line_rows
    with engine.begin() as conn:
        write_exposures(conn, ids, rows, idempotent=True)
        if bandit is not None:
            bandit.apply(conn, ids, rows, [])


class BufferedWriter:
    """Group-committing writer thread with a bounded queue (see the module docstring).

    Threads: rows are handed over by the event loop's thread only (`record`, `submit`,
    `close`) and taken by the writer thread only. The hand-over takes no lock: the deque's
    append/popleft are atomic, and every counter has a single writing thread (accepted rows
    on one side, written rows on the other). The condition only wakes the writer thread
    early (a caller awaits a commit, or `flush_rows` are queued); otherwise it looks every
    `flush_interval` seconds.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        flush_rows: int = DEFAULT_FLUSH_ROWS,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        journal: Journal | None = None,
        bandit: BanditFeedback | None = None,
        lock_wait: float | None = None,
        commit_wait: float | None = None,
        features: bool = True,
        recent_limit: int = RECENT_LIMIT,
    ) -> None:
        self.engine = engine
        # The feature store is updated in the events' transaction; on a SQLite file the
        # units changed are then signalled to every process (storage/feature_signals.py).
        self.features = features
        self.recent_limit = recent_limit
        self._signals = signal_path(engine) if features else None
        # Bounds in seconds (None: unbounded): each lock wait of a transaction, and a
        # `commit` caller's wait for its rows' commit.
        self.lock_wait = lock_wait
        self.commit_wait = commit_wait
        # Bandit trials and rewards are counted in the transaction of their rows.
        self.bandit = bandit
        self.max_rows = max_rows
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval
        self.journal = journal
        self.exposure_ids = ExposureIds(engine)
        sqlite_file = _sqlite_file(engine)
        self._turn_file = None
        if sqlite_file is not None:
            self._turn_file = sqlite_file.with_name(sqlite_file.name + ".writer-turn")
        self._jobs: deque[_Job] = deque()
        self._accepted_rows = 0  # event loop thread only
        self._written_rows = 0  # writer thread only (committed or refused for good)
        self._urgent = False
        self._closed = False
        self._give_up_at = float("inf")
        self._cond = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._run, name="abplatform-writer", daemon=True)
        self.commits = 0

    def start(self) -> None:
        """Open the journal, reserve the first block of exposure ids, start the thread."""
        if self.journal is not None:
            self.journal.open()
        self.exposure_ids.refill()
        self._thread.start()

    @property
    def pending_rows(self) -> int:
        """Rows queued and not yet committed."""
        return self._accepted_rows - self._written_rows

    def record(self, exposures: Sequence[ExposureRow]) -> list[int]:
        """Accept exposures: reserve their ids, journal and queue them; return the ids.

        Raises WriterFull/WriterClosed (nothing accepted). Accepted rows reach the database
        without the caller waiting (retried on failure; replayed from the journal after a
        crash).
        """
        self._check(len(exposures))
        ids = self._ids(len(exposures))
        job = _Job(exposures, tuple(ids), ())
        if self.journal is not None:
            job.line = journal_line(ids, exposures)
            job.segment = self.journal.append(job.line)
        self._enqueue(job)
        return ids

    def submit(
        self,
        exposures: Sequence[ExposureRow],
        events: Sequence[EventRow],
        deadline: float = float("inf"),
    ) -> asyncio.Future[WriteResult]:
        """Queue rows; the future resolves after their commit. Raises WriterFull/WriterClosed.

        `deadline` (time.monotonic()): when the caller stops waiting; the transaction
        holding the rows then waits for locks only until shortly before it.
        """
        self._check(len(exposures) + len(events))
        loop = asyncio.get_running_loop()
        job = _Job(exposures, self._ids(len(exposures)), events, loop.create_future(), loop)
        job.deadline = deadline
        self._enqueue(job)
        return job.future  # type: ignore[return-value]

    async def commit(
        self, exposures: Sequence[ExposureRow], events: Sequence[EventRow]
    ) -> WriteResult:
        """Queue rows and wait for their commit, at most `commit_wait` seconds.

        Past the bound, rows not yet taken by the writer thread are withdrawn (nothing
        written) and DatabaseUnavailable is raised; rows already in a transaction raise
        CommitPending (they may still be stored). Both also when the transaction failed
        for a busy or unreachable database (then nothing was written).
        """
        if self.commit_wait is None:
            return await self.submit(exposures, events)
        future = self.submit(exposures, events, deadline=time.monotonic() + self.commit_wait)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.commit_wait)
        except TimeoutError:
            if future.done() and not future.cancelled() and future.exception() is None:
                return future.result()  # committed just as the bound passed
            if self._withdraw(future):
                raise DatabaseUnavailable(
                    f"the rows were not written within {self.commit_wait:g} s "
                    "(ABPLATFORM_API_EVENTS_WAIT_SECONDS): the database is locked or busy"
                ) from None
            raise CommitPending(
                f"the commit did not finish within {self.commit_wait:g} s "
                "(ABPLATFORM_API_EVENTS_WAIT_SECONDS)"
            ) from None

    def _withdraw(self, future: asyncio.Future[WriteResult]) -> bool:
        """Take the job of `future` out of the queue if the writer has not taken it yet."""
        with self._cond:  # `_take` pops under the same lock: taken or withdrawn, not both
            for job in self._jobs:
                if job.future is future:
                    self._jobs.remove(job)
                    self._accepted_rows -= job.rows
                    return True
        return False

    async def flush(self) -> None:
        """Wait until everything accepted before this call has committed."""
        await self.submit((), ())

    def _check(self, rows: int) -> None:
        if self._closed:
            raise WriterClosed("the server is shutting down")
        pending = self.pending_rows
        if pending and pending + rows > self.max_rows:
            raise WriterFull(f"{pending} rows are waiting to be written")

    def _ids(self, n: int) -> list[int]:
        if n == 0:
            return []
        ids = self.exposure_ids.take(n)
        if self.exposure_ids.low:
            self._wake()  # the writer thread reserves the next block
        return ids

    def _enqueue(self, job: _Job) -> None:
        self._jobs.append(job)
        self._accepted_rows += job.rows
        if job.future is not None:
            self._urgent = True
            self._wake()
        elif self.pending_rows >= self.flush_rows:
            self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    async def close(self, timeout: float = 25.0) -> None:
        """Stop accepting rows, write everything queued, stop the thread, close the journal.

        If the database does not take the queued rows within `timeout` seconds, the journal
        keeps them for the next start-up.
        """
        self._give_up_at = time.monotonic() + timeout
        self._closed = True
        self._wake()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout)
        if self.journal is not None and not self._thread.is_alive():
            kept = self.journal.close()
            if kept:
                log.error("%d accepted submissions are left to the journal's replay", kept)

    def _take(self) -> list[_Job] | None:
        seen: float | None = None  # when the writer first saw rows waiting
        with self._cond:
            while True:
                now = time.monotonic()
                if self._jobs:
                    seen = now if seen is None else seen
                    urgent = self._closed or self._urgent or self.pending_rows >= self.flush_rows
                    if urgent or now >= seen + self.flush_interval:
                        break
                    self._cond.wait(seen + self.flush_interval - now)
                elif self._closed:
                    return None
                elif self.exposure_ids.low:
                    return []
                else:
                    self._cond.wait(self.flush_interval)
            self._urgent = False  # cleared before taking: a later waiting job sets it again
            jobs: list[_Job] = []
            rows = 0
            # Popped under the lock, so `_withdraw` sees each job either queued or taken.
            while self._jobs and (not jobs or rows + self._jobs[0].rows <= self.flush_rows):
                job = self._jobs.popleft()
                jobs.append(job)
                rows += job.rows
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            if self.exposure_ids.low:
                try:
                    self.exposure_ids.refill()
                except DatabaseUnavailable as exc:  # retried; requests use the ids left
                    log.warning("%s; %d ids left", exc.message, self.exposure_ids.available)
                    time.sleep(0.2)
                except Exception:  # take() reserves synchronously if the reserve runs dry
                    log.exception("reserving exposure ids failed")
                    time.sleep(0.2)
            if not jobs:
                continue
            outcomes = self._write_isolated(jobs)
            if self._finish(jobs, outcomes):
                if self._closed and time.monotonic() > self._give_up_at:
                    return  # shutting down with the database away: the journal keeps them
                self._back_off(0.2)  # the database is unavailable: wait, then try again

    def _back_off(self, seconds: float) -> None:
        """Sleep before retrying accepted rows; a caller awaiting its commit ends the sleep
        (its transaction waits for the lock itself, bounded: no busy loop)."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while (
                not self._urgent and not self._closed and (left := deadline - time.monotonic()) > 0
            ):
                self._cond.wait(left)

    def _finish(self, jobs: list[_Job], outcomes: list[WriteResult | BaseException]) -> bool:
        """Release committed rows, answer waiting callers; re-queue accepted rows that failed
        transiently (returns whether any were)."""
        retry: list[_Job] = []
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future is None and isinstance(outcome, _Transient):
                job.retries += 1
                retry.append(job)  # accepted rows: keep them queued, in order
                continue
            self._written_rows += job.rows
            if job.segment is not None and self.journal is not None:
                if isinstance(outcome, BaseException):
                    self._reject(job)
                self.journal.committed(job.segment)
            if job.future is not None:
                self._answer(job, outcome)
            elif isinstance(outcome, WriteFailed):
                log.error("accepted exposures %s were refused for good", list(job.exposure_ids))
        if retry:
            with self._cond:  # `_withdraw` scans the queue under this lock
                self._jobs.extendleft(reversed(retry))
        return bool(retry)

    @staticmethod
    def _answer(job: _Job, outcome: WriteResult | BaseException) -> None:
        """Resolve a waiting caller's future (once: a second answer is ignored)."""
        if job.future is not None and job.loop is not None:
            # RuntimeError: the loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_resolve, job.future, outcome)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """On a SQLite file, the writers of all server processes take turns under `flock`.

        SQLite's own busy handler polls a held lock with sleeps of 1, 2, 5, 10 ... 100 ms;
        a blocking `flock` hands the turn over as soon as the other writer commits.
        """
        if self._turn_file is None:
            yield
            return
        fd = os.open(self._turn_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _reject(self, job: _Job) -> None:
        if self.journal is None:
            return
        with open(self.journal.directory / REJECTED_FILE, "ab") as rejected:
            rejected.write(job.line)

    def _write_isolated(
        self, jobs: list[_Job], idempotent: bool = False
    ) -> list[WriteResult | BaseException]:
        """Write a group; on PostgreSQL, once accepted rows are being retried (a table may
        be locked), waiting submissions go first in a transaction of their own, so a lock on
        the exposures table does not hold up events."""
        retrying = any(job.retries for job in jobs)
        if idempotent or not retrying or is_sqlite(self.engine):  # SQLite locks everything
            return self._write_group(jobs, idempotent)
        waiting = [job for job in jobs if job.future is not None]
        accepted = [job for job in jobs if job.future is None]
        outcomes: dict[int, WriteResult | BaseException] = {}
        if waiting:
            outcomes.update(zip(map(id, waiting), self._write_group(waiting), strict=True))
            for job in waiting:  # answered now, not after the accepted rows' lock wait
                self._answer(job, outcomes[id(job)])
        if accepted:
            outcomes.update(zip(map(id, accepted), self._write_group(accepted), strict=True))
        return [outcomes[id(job)] for job in jobs]

    def _write_group(
        self, jobs: list[_Job], idempotent: bool = False
    ) -> list[WriteResult | BaseException]:
        """One commit for the group; if it fails, each submission alone, so one bad
        submission cannot fail the others (a failed transaction wrote nothing).

        If the database is unavailable (connection lost, a lock wait past its bound,
        SQLite's "database is locked"), each alone would fail the same way after the same
        wait: every submission gets `_Transient` at once (accepted rows are retried, waiting
        callers answered 503). On anything else (a constraint, bad data) a submission
        failing alone gets WriteFailed.
        """
        try:
            return list(self._write(jobs, idempotent))
        except Exception as exc:
            if is_unavailable(exc) or isinstance(exc, OperationalError | InterfaceError):
                log.warning(
                    "the database is unavailable (%s): %d submissions wait",
                    type(exc).__name__,
                    len(jobs),
                )
                failed = _Transient(f"the database is unavailable: {type(exc).__name__}")
                return [failed] * len(jobs)
            if len(jobs) == 1:
                log.exception("writing a submission of %d rows failed", jobs[0].rows)
                return [WriteFailed(f"the database refused the rows: {type(exc).__name__}")]
        # After an unknown outcome (e.g. a lost connection at COMMIT) a retry must not
        # fail on rows that did get stored: write exposures idempotently from here on.
        return [self._write_group([job], idempotent=True)[0] for job in jobs]

    def _lock_wait(self, jobs: list[_Job]) -> float | None:
        """The group's lock wait: `lock_wait`, shortened to end before a waiting caller's
        deadline (so its answer is a definite one)."""
        deadline = min(job.deadline for job in jobs)
        if deadline == float("inf"):
            return self.lock_wait
        left = max(MIN_LOCK_WAIT_SECONDS, deadline - time.monotonic() - COMMIT_MARGIN_SECONDS)
        return left if self.lock_wait is None else min(self.lock_wait, left)

    def _write(self, jobs: list[_Job], idempotent: bool) -> list[WriteResult]:
        self.commits += 1
        with (
            self._turn(),
            self.engine.connect() as conn,
            bounded_lock_wait(conn, self._lock_wait(jobs)),
            conn.begin(),
        ):
            ids = [i for job in jobs for i in job.exposure_ids]
            exposures = [e for job in jobs for e in job.exposures]
            write_exposures(conn, ids, exposures, idempotent=idempotent)
            batches = [job.events for job in jobs]
            bandit = self.bandit
            events = [e for b in batches for e in b]
            # Rewards and features count only events this transaction inserts (not duplicates).
            wants_rewards = bandit is not None and bandit.wants(events)
            new: list[EventRow] | None = [] if wants_rewards or (self.features and events) else None
            counts = write_events(conn, batches, new)
            update = None
            if self.features and new:
                stored = {e.event_id for e in new}
                update = update_features(conn, batches, stored, recent_limit=self.recent_limit)
            if bandit is not None:
                bandit.apply(conn, ids, exposures, new if wants_rewards and new else [])
        if update is not None and update.versions and self._signals is not None:
            # After the commit, before anyone is answered: every process re-reads these units.
            try:
                signal_changed(self._signals, update.versions)
            except OSError:
                log.exception("unit features changed but could not be signalled")
        return [
            WriteResult(
                tuple(job.exposure_ids),
                n_new,
                duplicates,
                update.applied[i] if update is not None else 0,
                tuple(update.unfeatured[i]) if update is not None else (),
            )
            for i, (job, (n_new, duplicates)) in enumerate(zip(jobs, counts, strict=True))
        ]


class _Transient(WriteFailed):
    """The database could not be reached or was busy; the same rows may succeed later."""


class CommitPending(DatabaseUnavailable):
    """A `commit` caller's bound passed while its rows were in a transaction: they may
    still be stored (a retry then counts them as duplicates)."""
