"""Reading CSV inputs with checked headers, and the per-line problems every CSV loader reports."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from abplatform.errors import DataError
from abplatform.values import MAX_SECONDS, MIN_SECONDS, NUL_PROBLEM, SECONDS_PROBLEM

MAX_ID_LENGTH = 128
MAX_PROBLEMS = 50
CHUNK_ROWS = 50_000
"""Checked rows a loader collects before it writes them."""


class Problems:
    """Problems found so far, one line per bad row (or header): MAX_PROBLEMS kept, rest counted."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0
        self.files: list[str] = []

    def add(self, file: str, line: int, what: str) -> None:
        self.count += 1
        if file not in self.files:
            self.files.append(file)
        if len(self.lines) < MAX_PROBLEMS:
            self.lines.append(f"{file} line {line}: {what}")

    def listed(self) -> list[str]:
        """The lines kept, then "... and N more" for the rest."""
        listed = list(self.lines)
        if self.count > len(listed):
            listed.append(f"... and {self.count - len(listed)} more")
        return listed

    def error(self, message: str, hint: str) -> DataError:
        """A `DataError` listing the problems under `message`."""
        return DataError(message, self.listed(), hint=hint)

    def raise_if_any(self) -> None:
        """Abort a load: a `DataError` saying nothing was written, if any problem was found."""
        if not self.count:
            return
        plural = "s" if self.count != 1 else ""
        raise self.error(
            f"cannot ingest {', '.join(self.files)}: {self.count} problem{plural}; "
            "nothing was written",
            hint="fix the rows listed (line numbers count the header too) and run the ingest again",
        )


class CsvLog:
    """An open CSV log whose header has been checked; yields rows with their line numbers."""

    def __init__(self, path: Path, handle: TextIO) -> None:
        self.path = path
        self.name = path.name
        self.reader = csv.reader(handle, strict=True)
        self.columns: dict[str, int] = {}
        self.width = 0
        self.header_line = 1
        self._last_line = 0

    @classmethod
    def start(
        cls, path: Path, stack: ExitStack, problems: Problems, what: str = "log"
    ) -> tuple[CsvLog, list[str] | None]:
        """Open `path` and read its header: the log and the stripped names.

        An empty (or blank) file is a problem, and its names are None.
        """
        try:
            handle = stack.enter_context(path.open(encoding="utf-8-sig", newline=""))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise DataError(
                f"cannot read {path}: {reason}",
                [f"{path.name}: {reason}"],
                hint=f"check the path of the {what} file",
            ) from None
        for line in nul_lines(path):
            problems.add(path.name, line, f"a cell contains a NUL character: text {NUL_PROBLEM}")
        log, before = cls(path, handle), problems.count
        header = log.header(problems)
        if header is None:
            if problems.count == before:  # an unreadable file has said why already
                problems.add(log.name, 1, "empty file: no header row and no data")
            return log, None
        return log, [name.strip() for name in header]

    def set_columns(self, names: list[str], problems: Problems) -> None:
        """Index the columns by name; a repeated name is a problem."""
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            problems.add(
                self.name, self.header_line, f"repeated column {', '.join(map(repr, repeated))}"
            )
        self.columns = {name: i for i, name in enumerate(names)}
        self.width = len(names)

    @classmethod
    def open(
        cls,
        path: Path,
        required: Sequence[str],
        optional: Sequence[str],
        stack: ExitStack,
        problems: Problems,
    ) -> CsvLog:
        """Open a CSV whose header must name `required` and may name `optional` columns."""
        log, names = cls.start(path, stack, problems)
        if names is None:  # empty: a problem already
            return log
        found = ", ".join(repr(name) for name in names)
        for column in required:
            if column not in names:
                problems.add(
                    log.name,
                    log.header_line,
                    f"missing required column {column!r} (found: {found})",
                )
        unknown = [name for name in names if name not in required and name not in optional]
        if unknown:
            problems.add(
                log.name,
                log.header_line,
                f"unknown column{'s' * (len(unknown) > 1)} "
                f"{', '.join(repr(name) for name in unknown)} "
                f"(required: {', '.join(required)}; optional: {', '.join(optional)})",
            )
        log.set_columns(names, problems)
        return log

    @classmethod
    def open_if_given(
        cls,
        path: Path | None,
        required: Sequence[str],
        optional: Sequence[str],
        stack: ExitStack,
        problems: Problems,
    ) -> CsvLog | None:
        """`open` for an input that may be absent (None: no such file given)."""
        if path is None:
            return None
        return cls.open(path, required, optional, stack, problems)

    def rows(self, problems: Problems) -> Iterator[tuple[int, list[str]]]:
        """Data rows with the 1-based line they start on; blank lines are skipped."""
        reader, width, last = self.reader, self.width, self._last_line
        try:
            for row in reader:
                line, last = last + 1, reader.line_num  # a quoted field may span lines
                if len(row) == width:
                    yield line, row
                elif row:
                    problems.add(self.name, line, f"expected {width} fields, found {len(row)}")
        except (UnicodeDecodeError, csv.Error) as exc:
            self._unreadable(exc, problems)

    def header(self, problems: Problems) -> list[str] | None:
        """The first non-blank record, or None for an empty file."""
        last = 0
        try:
            for row in self.reader:
                start, last = last + 1, self.reader.line_num
                if row:
                    self.header_line, self._last_line = start, last
                    return row
        except (UnicodeDecodeError, csv.Error) as exc:
            self._unreadable(exc, problems)
        return None

    def _unreadable(self, exc: UnicodeDecodeError | csv.Error, problems: Problems) -> None:
        if isinstance(exc, UnicodeDecodeError):
            line, reason = first_bad_utf8_line(self.path)
            problems.add(self.name, line, f"not UTF-8 ({reason}); reading stopped here")
        else:
            line = self.reader.line_num
            problems.add(self.name, line, f"malformed CSV ({exc}); reading stopped here")


def nul_lines(path: Path) -> list[int]:
    """The lines holding a NUL byte (in UTF-8, only a NUL character is one): a fast byte scan."""
    lines: dict[int, None] = {}
    line = 1
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            if b"\x00" in block:
                parts = block.split(b"\n")
                lines.update((line + i, None) for i, part in enumerate(parts) if b"\x00" in part)
            line += block.count(b"\n")
    return list(lines)


def first_bad_utf8_line(path: Path) -> tuple[int, str]:
    """Where a file stops being UTF-8; scanned again only when decoding has failed."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, f"{exc.reason} at byte {exc.start + 1} of the line"
    return 0, "undecodable bytes"


def show(value: str) -> str:
    """A value as a problem line quotes it: repr, cut to 60 characters."""
    return repr(value if len(value) <= 60 else value[:57] + "...")


def bad(column: str, message: str, value: str) -> str:
    """One problem of a cell: `column: message (got value)`."""
    return f"{column}: {message} (got {show(value)})"


def parse_float(value: str) -> float:
    """The number, or NaN when the text is not one (NaN then fails every range check)."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def parse_int(value: str) -> int:
    """The whole number, or -1 when the text is not one."""
    try:
        return int(value)
    except ValueError:
        return -1


def parse_seconds(value: str) -> int | None:
    """ISO 8601 (naive means UTC) or Unix seconds -> whole Unix seconds; None if neither."""
    if value[4:5] == "-":  # YYYY-...: skip float(), whose failure is the slow path
        seconds = iso_seconds(value)
    else:
        try:
            seconds = float(value)
        except ValueError:
            seconds = iso_seconds(value)
    if MIN_SECONDS <= seconds < MAX_SECONDS:  # False for NaN too
        return math.floor(seconds)
    return None


def iso_seconds(value: str) -> float:
    """ISO 8601 (naive means UTC) -> Unix seconds; NaN if the text is not ISO 8601."""
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return math.nan
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


# Diagnosis of a bad row: only run once the fast checks have failed, so it may be slow.


def id_problems(column: str, value: str, *, required: bool = True) -> list[str]:
    """What is wrong with an id cell: empty (if required) or too long."""
    if not value:
        return [f"{column}: empty"] if required else []
    if len(value) > MAX_ID_LENGTH:
        return [bad(column, f"longer than {MAX_ID_LENGTH} characters", value)]
    return []


def timestamp_problems(value: str) -> list[str]:
    """What is wrong with a timestamp cell: not a time, or outside 1970..2100."""
    if parse_seconds(value) is not None:
        return []
    seconds = iso_seconds(value)
    if math.isnan(seconds):
        seconds = parse_float(value)
    if not math.isfinite(seconds):
        return [bad("timestamp", "not ISO 8601 or Unix seconds", value)]
    return [bad("timestamp", SECONDS_PROBLEM, value)]
