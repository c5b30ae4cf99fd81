"""API-key verification for one server process: cache, failure limit, bounded scrypt.

A verified key is cached (by the SHA-256 of its text) for `cache_seconds`, so scrypt runs
once per key per period. Failures are what an attacker controls, so they are bounded three
ways:

- the same wrong text again within `negative_seconds` is answered 401 from memory (a
  misconfigured client costs nothing and keeps getting the truthful answer);
- at most `failures_allowed` different failed texts per (key id, client) and
  `client_failures_allowed` per client within `window_seconds`; past that, 429 with
  `Retry-After` until the window frees, without a database look-up or scrypt;
- verifications (a look-up plus ~20-70 ms of scrypt) run on one dedicated thread, never on
  the event loop and never more than one at a time per process, with at most
  `max_waiting` queued (else 503 + Retry-After): a flood cannot take both cores from
  serving.

While the database is unavailable a key verified earlier keeps working past its period
(stale-if-error, for at most `stale_seconds`), and a key not seen before gets 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

from fastapi import HTTPException
from sqlalchemy import Engine

from abplatform.errors import DatabaseUnavailable
from abplatform.keys import KeyIdentity, split_key, verify_key
from abplatform.storage.db import is_unavailable, transaction

log = logging.getLogger(__name__)

MAX_TRACKED = 10_000
"""Entries kept per table (cache, failures, limits); the oldest go first."""


@dataclass(frozen=True)
class VerifierLimits:
    """How long verified and failed keys are remembered, and how many failures are allowed."""

    cache_seconds: float = 60.0
    stale_seconds: float = 3600.0
    negative_seconds: float = 10.0
    failures_allowed: int = 5
    client_failures_allowed: int = 50
    window_seconds: float = 60.0
    max_waiting: int = 64


K = TypeVar("K")
V = TypeVar("V")


class _Bounded(OrderedDict[K, V], Generic[K, V]):
    """An insertion-ordered dict that forgets its oldest entries past `MAX_TRACKED`."""

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_TRACKED:
            self.popitem(last=False)


class FailureWindow:
    """Times of recent failures per subject; `blocked` says for how long a subject waits."""

    def __init__(self, allowed: int, window: float) -> None:
        self.allowed = allowed
        self.window = window
        self._times: _Bounded[object, deque[float]] = _Bounded()

    def _recent(self, subject: object, now: float) -> deque[float]:
        times = self._times.get(subject)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, subject: object, now: float) -> float:
        """Seconds until `subject` may try again (0: it may now)."""
        times = self._recent(subject, now)
        if len(times) < self.allowed:
            return 0.0
        return times[-self.allowed] + self.window - now

    def failed(self, subject: object, now: float) -> None:
        """Count one failure of `subject`."""
        times = self._recent(subject, now)
        times.append(now)
        self._times.put(subject, times)


def _too_many(seconds: float) -> HTTPException:
    wait = str(max(1, math.ceil(seconds)))
    return HTTPException(
        429,
        f"too many failed API-key verifications from this client; retry after {wait} s",
        headers={"Retry-After": wait},
    )


class KeyVerifier:
    """The process' key checks: cache, negative cache, failure windows, one hashing thread."""

    def __init__(
        self,
        engine: Engine,
        limits: VerifierLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.limits = chosen = limits or VerifierLimits()
        self.clock = clock
        self._verified: _Bounded[bytes, tuple[KeyIdentity, float]] = _Bounded()  # verified at
        self._failed: _Bounded[bytes, float] = _Bounded()  # failed at
        self._per_key = FailureWindow(chosen.failures_allowed, chosen.window_seconds)
        self._per_client = FailureWindow(chosen.client_failures_allowed, chosen.window_seconds)
        self._in_flight: dict[bytes, asyncio.Future[KeyIdentity | None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abplatform-keys")

    def close(self) -> None:
        """Stop the hashing thread (queued verifications are dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def identity(self, plain: str, client: str) -> KeyIdentity | None:
        """The key's identity, or None (unknown, wrong or revoked); 429/503 as described."""
        digest = hashlib.sha256(plain.encode("utf-8", "surrogatepass")).digest()
        now = self.clock()
        cached = self._verified.get(digest)
        if cached is not None and now - cached[1] < self.limits.cache_seconds:
            return cached[0]
        failed_at = self._failed.get(digest)
        if failed_at is not None and now - failed_at < self.limits.negative_seconds:
            return None
        parts = split_key(plain)
        key_id = parts[0] if parts else ""
        wait = max(
            self._per_key.blocked((key_id, client), now), self._per_client.blocked(client, now)
        )
        if wait > 0:
            raise _too_many(wait)
        try:
            identity = await self._verify(digest, plain)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if cached is not None and now - cached[1] < self.limits.stale_seconds:
                log.warning("database unavailable: serving key %s from the cache", key_id)
                return cached[0]
            raise DatabaseUnavailable(
                "the database is unavailable, so this API key cannot be verified",
                hint="retry after Retry-After seconds; keys verified before the outage work",
            ) from exc
        now = self.clock()
        if identity is None:
            self._failed.put(digest, now)
            self._per_key.failed((key_id, client), now)
            self._per_client.failed(client, now)
        else:
            self._verified.put(digest, (identity, now))
            self._failed.pop(digest, None)
        return identity

    async def _verify(self, digest: bytes, plain: str) -> KeyIdentity | None:
        """Look the key up and hash its secret on the key thread; equal texts share one run."""
        task = self._in_flight.get(digest)
        if task is None:
            if len(self._in_flight) >= self.limits.max_waiting:
                raise HTTPException(
                    503,
                    f"{len(self._in_flight)} API-key verifications are waiting; retry",
                    headers={"Retry-After": "1"},
                )
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(
                loop.run_in_executor(self._pool, _lookup, self.engine, plain)
            )
            self._in_flight[digest] = task
            task.add_done_callback(partial(self._done, digest))
        return await asyncio.shield(task)

    def _done(self, digest: bytes, _: asyncio.Future[KeyIdentity | None]) -> None:
        self._in_flight.pop(digest, None)


def _lookup(engine: Engine, plain: str) -> KeyIdentity | None:
    with transaction(engine) as session:
        return verify_key(session, plain)
