"""Append-only journal of accepted writes, so rows acknowledged before commit survive a crash.

Each server process copies one line per accepted submission into its own segment file
(`<pid>-<random>.journal`, memory-mapped, held under an exclusive `flock` while the process
lives) before the request is answered. The copy lands in the kernel's page cache without a
system call (none per request, and the GIL is never released for it); no fsync, so the rows
survive the process (SIGKILL, a crash), not the machine. A segment is deleted once every
submission in it has committed. At start-up a process replays the segments no live process
holds (their owner died) with idempotent inserts, then deletes them; a segment the database
refuses is renamed `*.rejected`.

Threads: `append` is called by the event loop's thread only, `committed` by the writer
thread only; each counter has one writer, so no lock is needed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".journal"
DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024


@dataclass(eq=False)
class Segment:
    """One journal file: descriptor, mapping, write offset, submissions appended and done."""

    path: Path
    fd: int
    mapped: mmap.mmap
    offset: int = 0
    appended: int = 0  # written by the appending thread only
    done: int = 0  # written by the committing thread only
    current: bool = True


class Journal:
    """This process' journal segments (see the module docstring for the threads)."""

    def __init__(self, directory: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._segment: Segment | None = None
        self._segments: list[Segment] = []

    def open(self) -> None:
        """Create the directory and the first segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segment = self._new_segment(self.segment_bytes)

    def _new_segment(self, size: int) -> Segment:
        path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            os.posix_fallocate(fd, 0, size)  # a full disk fails here, not while copying
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, size)  # a file system without fallocate: a sparse file
        segment = Segment(path, fd, mmap.mmap(fd, size))
        self._segments.append(segment)
        return segment

    def append(self, line: bytes) -> Segment:
        """Copy one submission (a line ending in a newline) in; return its segment."""
        segment = self._segment
        if segment is None:
            raise RuntimeError("the journal is not open")
        end = segment.offset + len(line)
        if end > len(segment.mapped):
            segment.current = False
            segment = self._segment = self._new_segment(max(self.segment_bytes, len(line)))
            end = len(line)
        segment.mapped[segment.offset : end] = line
        segment.offset = end
        segment.appended += 1
        return segment

    def committed(self, segment: Segment) -> None:
        """One submission of `segment` is in the database; drop segments all committed."""
        segment.done += 1
        for old in list(self._segments):
            if not old.current and old.done == old.appended:
                self._remove(old)

    def _remove(self, segment: Segment) -> None:
        segment.path.unlink(missing_ok=True)
        segment.mapped.close()
        os.close(segment.fd)
        self._segments.remove(segment)

    def close(self) -> int:
        """Delete the segments whose submissions all committed; return the number kept."""
        kept = 0
        for segment in list(self._segments):
            if segment.done == segment.appended:
                self._remove(segment)
            else:
                segment.mapped.close()
                os.close(segment.fd)  # releases the lock: the next start-up replays it
                kept += 1
        self._segments.clear()
        self._segment = None
        return kept


@contextmanager
def _locked(path: Path) -> Iterator[int | None]:
    """The open, exclusively locked file; None if a live process holds it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def replay(directory: Path, apply: Callable[[list[bytes]], None]) -> int:
    """Hand the lines of every orphaned segment to `apply` (idempotent inserts), then delete it.

    A torn last line (the process died inside the write, so that request was never
    answered) is skipped. Returns the number of lines replayed.
    """
    if not directory.is_dir():
        return 0
    replayed = 0
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        with _locked(path) as fd:
            if fd is None:
                continue
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
            # The unused tail of a mapped segment is zeros; JSON lines never hold a NUL byte.
            lines = data.rstrip(b"\0").split(b"\n")
            if lines and lines[-1]:
                log.warning("%s: skipping a torn last line of %d bytes", path, len(lines[-1]))
            lines = [line for line in lines[:-1] if line]
            try:
                if lines:
                    apply(lines)
            except Exception:
                log.exception("replaying %s failed; kept as %s.rejected", path, path.name)
                path.rename(path.with_suffix(SUFFIX + ".rejected"))
                continue
            path.unlink(missing_ok=True)
            replayed += len(lines)
            log.warning("replayed %d accepted submissions from %s", len(lines), path)
    return replayed
