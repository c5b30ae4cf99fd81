"""Which units' online features changed, across server processes, without a database read.

SQLite file: `<db file>.unit-features` holds `SLOTS` 8-byte counters. A unit hashes to one
slot; the writer adds one to the slot of every unit whose features it changed, after the
transaction committed and before the events are acknowledged. Every reader maps the file:
a unit whose slot still holds the value seen when its features were last read has not
changed since (units sharing a slot only cost an extra read). A slot of 0 means no
features were ever stored for any unit of that slot.

PostgreSQL (workers on any host) and in-memory SQLite have no such file: `signals_for`
returns None and readers read the unit's row (batched) on every request instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine

SLOTS = 1 << 18
"""Counters in the file (2 MiB): collisions only cost a read, never a stale answer."""
_SLOT = struct.Struct("<Q")

log = logging.getLogger(__name__)


def slot_of(catalogue: str, unit_id: str) -> int:
    """The slot of a unit's features (stable across processes: no salted `hash`)."""
    digest = hashlib.blake2b(f"{catalogue}\x00{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SLOTS


def signal_path(engine: Engine) -> Path | None:
    """The slot file beside a SQLite database file (None: PostgreSQL or in memory)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    path = Path(database).resolve()
    return path.with_name(path.name + ".unit-features")


def _open(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if os.fstat(fd).st_size < SLOTS * _SLOT.size:
        os.ftruncate(fd, SLOTS * _SLOT.size)  # zeros: nothing changed yet (a sparse file)
    return fd


def signal_changed(path: Path, keys: Iterable[tuple[str, str]]) -> None:
    """Add one to the slot of each (catalogue, unit) under `flock` (after their commit).

    An OSError is logged and re-raised: the events are committed but readers would not see
    the change, so the caller must not acknowledge them as seen by every worker.
    """
    slots = sorted({slot_of(c, u) for c, u in keys})
    if not slots:
        return
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with mmap.mmap(fd, SLOTS * _SLOT.size, mmap.MAP_SHARED) as view:
            for slot in slots:
                offset = slot * _SLOT.size
                _SLOT.pack_into(view, offset, _SLOT.unpack_from(view, offset)[0] + 1)
    finally:
        os.close(fd)  # releases the lock


class FeatureSignals:
    """A reader's view of the slot file: one read of 8 mapped bytes per check."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = _open(path)
        try:
            self._map = mmap.mmap(fd, SLOTS * _SLOT.size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)  # the mapping stays valid

    def value(self, catalogue: str, unit_id: str) -> int:
        """The unit's slot now: compare with the value seen at the last read of its row."""
        value: int = _SLOT.unpack_from(self._map, slot_of(catalogue, unit_id) * _SLOT.size)[0]
        return value

    def close(self) -> None:
        """Unmap the file."""
        self._map.close()


def signals_for(engine: Engine) -> FeatureSignals | None:
    """The slot file reader of `engine`'s database, or None (see the module docstring)."""
    path = signal_path(engine)
    if path is None:
        return None
    try:
        return FeatureSignals(path)
    except OSError as exc:
        log.warning("unit features: no slot file at %s (%s); reading rows instead", path, exc)
        return None
