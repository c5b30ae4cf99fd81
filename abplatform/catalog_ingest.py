"""Load a team's own catalogue, user profiles and interaction history from CSV, all or nothing.

Three inputs, any subset per command, written in one transaction into one catalogue:

- items: ``item_id`` + optional ``category``, ``brand``, ``price``, ``title``, ``tags``
  (labels separated by ``|``);
- interactions: ``user_id``, ``item_id``, ``timestamp`` (ISO 8601 or Unix seconds) + optional
  ``type`` (view, click, add_to_cart, purchase, rating; default click) and ``value``;
- users: ``user_id`` + any other columns, stored as categorical profile features.

Re-ingesting is safe. Items and users are upserted by id: a stored item keeps its dense
index and gets the file's values for the columns the file has (other columns keep theirs);
a stored user's features are merged (the file's columns win). Interactions are compared with
the stored history of the catalogue on (user, item, type, timestamp, value): a file row is
written only beyond the identical rows already stored, so loading the same file twice, or a
longer export of the same log, adds nothing twice.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine

from abplatform import csvcheck
from abplatform.csvcheck import MAX_ID_LENGTH, CsvLog, Problems
from abplatform.domain import FEEDBACK_TYPES
from abplatform.errors import DataError
from abplatform.progress import Progress, no_progress
from abplatform.storage.bulk import gc_paused, sqlite_cache
from abplatform.storage.catalog import (
    ItemFields,
    insert_interactions,
    insert_items,
    insert_users,
    stored_interactions,
    stored_item_ids,
    stored_users,
    update_items,
    update_user_features,
)
from abplatform.storage.db import transaction

ITEM_COLUMNS = ("item_id",)
ITEM_OPTIONAL_COLUMNS = ("category", "brand", "price", "title", "tags")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
INTERACTION_OPTIONAL_COLUMNS = ("type", "value")
USER_COLUMNS = ("user_id",)

INTERACTION_TYPES: tuple[str, ...] = FEEDBACK_TYPES
"""Types an interaction may have (an empty or missing `type` means click)."""
DEFAULT_INTERACTION_TYPE = "click"
MAX_LABEL_LENGTH = 128  # category, brand and feature names: String(128) columns
TAG_SEPARATOR = "|"

# progress(stage, done, total): stage is "interactions", counted in lines of the file.


@dataclass(frozen=True)
class CatalogIngestSummary:
    """What a catalogue load wrote."""

    catalog: str
    items_added: int = 0
    items_updated: int = 0
    users_added: int = 0
    users_updated: int = 0
    interactions: int = 0
    duplicate_interactions: int = 0

    def describe(self) -> str:
        """One line for the command line."""
        return (
            f"catalogue {self.catalog!r}: {self.items_added:,} new items, "
            f"{self.items_updated:,} updated; {self.users_added:,} new users, "
            f"{self.users_updated:,} updated; {self.interactions:,} new interactions "
            f"({self.duplicate_interactions:,} already stored were skipped)"
        )


@dataclass(frozen=True)
class InteractionColumns:
    """Validated interactions as parallel columns (timestamps in Unix seconds)."""

    user_ids: npt.NDArray[np.str_]
    item_ids: npt.NDArray[np.str_]
    types: npt.NDArray[np.str_]
    values: npt.NDArray[np.float64]  # NaN where no value was given
    timestamps: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])


class CatalogFiles(TypedDict, total=False):
    """The inputs of one catalogue load (any subset) and its progress callback."""

    items: Path | None
    interactions: Path | None
    users: Path | None
    progress: Progress


def ingest_catalog(
    engine: Engine, catalog: str, **files: Unpack[CatalogFiles]
) -> CatalogIngestSummary:
    """Load the given CSV files into `catalog` in one transaction; see `load_catalog_files`."""
    with gc_paused(), transaction(engine) as session:
        return load_catalog_files(session.connection(), catalog, **files)


def load_catalog_files(
    conn: Connection,
    catalog: str,
    *,
    items: Path | None = None,
    interactions: Path | None = None,
    users: Path | None = None,
    progress: Progress = no_progress,
) -> CatalogIngestSummary:
    """Check and write the files inside the caller's open transaction.

    Every row of every file is checked, and any problem raises a `DataError` listing the
    bad rows by file and line (the first `MAX_PROBLEMS`, then a count) after the whole input
    was read; the caller's transaction then rolls back, so nothing is written. Item ids in
    `interactions` must be in `items` or already in the catalogue.
    """
    if len(catalog) > MAX_ID_LENGTH:
        raise DataError(
            f"catalogue name longer than {MAX_ID_LENGTH} characters",
            [f"catalog: {catalog[:60]!r}..."],
            hint="use a shorter `catalog:` in the experiment file",
        )
    problems = Problems()
    with ExitStack() as stack:
        item_log = CsvLog.open_if_given(items, ITEM_COLUMNS, ITEM_OPTIONAL_COLUMNS, stack, problems)
        user_log = _open_profiles(users, stack, problems) if users is not None else None
        interaction_log = CsvLog.open_if_given(
            interactions, INTERACTION_COLUMNS, INTERACTION_OPTIONAL_COLUMNS, stack, problems
        )
        problems.raise_if_any()  # a bad header: the rows cannot be read
        listed: set[str] = set()  # every item id of the items file, bad rows' too
        new_items = _read_items(item_log, problems, listed) if item_log is not None else []
        profiles = _read_profiles(user_log, problems) if user_log is not None else []
        stored_items = stored_item_ids(conn, catalog)
        known = set(stored_items) | listed
        where = f"{items.name} nor " if items is not None else ""
        unknown = f"unknown item (not in {where}catalogue {catalog!r})"
        load = _Load(conn, catalog, problems)
        with sqlite_cache(conn):
            if not problems.count:
                load.items(new_items, stored_items, item_log.columns if item_log else {})
                load.users(profiles)
            if interaction_log is not None and interactions is not None:
                total = _count_lines(interactions)
                load.interactions(
                    interaction_log,
                    known,
                    unknown,
                    lambda done: progress("interactions", min(done, total), total),
                )
                progress("interactions", total, total)
        problems.raise_if_any()
    return load.summary()


def read_interactions(
    path: Path, known_items: Iterable[str], catalog: str = "the catalogue"
) -> InteractionColumns:
    """Check an interactions CSV as `load_catalog_files` does and return it, writing nothing.

    `known_items` are the catalogue's item ids; any other item id is a problem. Raises
    `DataError` with one line per bad row.
    """
    problems = Problems()
    known = set(known_items)
    unknown = f"unknown item (not in {catalog})"
    chunks: list[list[_InteractionRow]] = []
    with ExitStack() as stack:
        log = CsvLog.open(path, INTERACTION_COLUMNS, INTERACTION_OPTIONAL_COLUMNS, stack, problems)
        if not problems.count:
            for chunk in _interaction_chunks(log, known, unknown, problems):
                chunks.append(list(chunk))
    if problems.count:
        raise problems.error(
            f"cannot use {path.name}: {problems.count} problem{'s' * (problems.count > 1)}",
            hint="fix the rows listed (line numbers count the header too)",
        )
    rows = [row for chunk in chunks for row in chunk]
    if not rows:
        return InteractionColumns(
            np.zeros(0, dtype=str),
            np.zeros(0, dtype=str),
            np.zeros(0, dtype=str),
            np.zeros(0, dtype=np.float64),
            np.zeros(0, dtype=np.int64),
        )
    user_ids, item_ids, types, values, seconds = zip(*rows, strict=True)
    return InteractionColumns(
        user_ids=np.array(user_ids, dtype=str),
        item_ids=np.array(item_ids, dtype=str),
        types=np.array(types, dtype=str),
        values=np.array([math.nan if v is None else v for v in values], dtype=np.float64),
        timestamps=np.array(seconds, dtype=np.int64),
    )


# Reading and checking.

_ItemRow = tuple[str, str | None, str | None, float | None, str | None, str | None]
_InteractionRow = tuple[str, str, str, float | None, int]


def _open_profiles(path: Path, stack: ExitStack, problems: Problems) -> CsvLog:
    """Open users.csv: `user_id` is required and every other column is a profile feature."""
    log, names = CsvLog.start(path, stack, problems, what="users")
    if names is None:  # empty: a problem already
        return log
    if "user_id" not in names:
        found = ", ".join(repr(name) for name in names)
        problems.add(
            log.name, log.header_line, f"missing required column 'user_id' (found: {found})"
        )
    for position, name in enumerate(names, start=1):
        if not name:
            problems.add(log.name, log.header_line, f"column {position} has no name")
        elif len(name) > MAX_LABEL_LENGTH:
            problems.add(
                log.name,
                log.header_line,
                csvcheck.bad("column name", f"longer than {MAX_LABEL_LENGTH}", name),
            )
    log.set_columns(names, problems)
    return log


def _label_problems(column: str, value: str) -> list[str]:
    if len(value) > MAX_LABEL_LENGTH:
        return [csvcheck.bad(column, f"longer than {MAX_LABEL_LENGTH} characters", value)]
    return []


def _read_items(log: CsvLog, problems: Problems, listed: set[str]) -> list[_ItemRow]:
    """Every valid row of items.csv; duplicates and bad values go to `problems`."""
    if not log.columns:
        return []
    columns = log.columns
    i_item = columns["item_id"]
    i_category, i_brand, i_price, i_title, i_tags = (columns.get(c) for c in ITEM_OPTIONAL_COLUMNS)
    first_line: dict[str, int] = {}
    rows: list[_ItemRow] = []
    for line, row in log.rows(problems):
        item = row[i_item].strip()
        category = row[i_category].strip() if i_category is not None else ""
        brand = row[i_brand].strip() if i_brand is not None else ""
        raw_price = row[i_price].strip() if i_price is not None else ""
        title = row[i_title].strip() if i_title is not None else ""
        raw_tags = row[i_tags] if i_tags is not None else ""
        found = csvcheck.id_problems("item_id", item)
        listed.add(item)
        if item and not found:
            earlier = first_line.setdefault(item, line)
            if earlier != line:
                found.append(csvcheck.bad("item_id", f"duplicate of line {earlier}", item))
        found += _label_problems("category", category) + _label_problems("brand", brand)
        price = csvcheck.parse_float(raw_price) if raw_price else None
        if price is not None and not (math.isfinite(price) and price >= 0.0):
            found.append(csvcheck.bad("price", "not a finite number >= 0", raw_price))
        if found:
            problems.add(log.name, line, "; ".join(found))
            continue
        labels = (label.strip() for label in raw_tags.split(TAG_SEPARATOR))
        tags = TAG_SEPARATOR.join(dict.fromkeys(label for label in labels if label))
        rows.append((item, category or None, brand or None, price, title or None, tags or None))
    return rows


def _read_profiles(log: CsvLog, problems: Problems) -> list[tuple[str, dict[str, str]]]:
    """(user id, features) of every valid row of users.csv; empty cells are missing features."""
    if "user_id" not in log.columns:
        return []
    i_user = log.columns["user_id"]
    features = [(name, i) for name, i in log.columns.items() if i != i_user and name]
    first_line: dict[str, int] = {}
    profiles: list[tuple[str, dict[str, str]]] = []
    for line, row in log.rows(problems):
        user = row[i_user].strip()
        found = csvcheck.id_problems("user_id", user)
        if user and not found:
            earlier = first_line.setdefault(user, line)
            if earlier != line:
                found.append(csvcheck.bad("user_id", f"duplicate of line {earlier}", user))
        if found:
            problems.add(log.name, line, "; ".join(found))
            continue
        values = {name: row[i].strip() for name, i in features}
        profiles.append((user, {name: value for name, value in values.items() if value}))
    return profiles


def _interaction_chunks(
    log: CsvLog,
    known: set[str],
    unknown: str,
    problems: Problems,
    on_line: Callable[[int], None] | None = None,
) -> Iterator[list[_InteractionRow]]:
    """Valid interaction rows in chunks of `CHUNK_ROWS`; bad rows go to `problems`."""
    if not log.columns:
        return
    i_user, i_item, i_ts = (log.columns[c] for c in INTERACTION_COLUMNS)
    i_type, i_value = (log.columns.get(c) for c in INTERACTION_OPTIONAL_COLUMNS)
    allowed = frozenset(INTERACTION_TYPES)
    chunk: list[_InteractionRow] = []
    for line, row in log.rows(problems):
        user = row[i_user].strip()
        item = row[i_item].strip()
        stamp = row[i_ts].strip()
        kind = row[i_type].strip().lower() if i_type is not None else ""
        raw_value = row[i_value].strip() if i_value is not None else ""
        kind = kind or DEFAULT_INTERACTION_TYPE
        ts = csvcheck.parse_seconds(stamp)
        value = csvcheck.parse_float(raw_value) if raw_value else None
        if (
            0 < len(user) <= MAX_ID_LENGTH
            and item in known
            and ts is not None
            and kind in allowed
            and (value is None or math.isfinite(value))
        ):
            chunk.append((user, item, kind, value, ts))
            if len(chunk) >= csvcheck.CHUNK_ROWS:
                yield chunk
                chunk = []
                if on_line is not None:
                    on_line(line)
        else:
            what = _interaction_problems(user, item, stamp, kind, raw_value, known, unknown)
            problems.add(log.name, line, what)
    if chunk:
        yield chunk


def _interaction_problems(
    user: str, item: str, stamp: str, kind: str, value: str, known: set[str], unknown: str
) -> str:
    found = csvcheck.id_problems("user_id", user)
    item_problems = csvcheck.id_problems("item_id", item)
    if not item_problems and item not in known:
        item_problems = [csvcheck.bad("item_id", unknown, item)]
    found += item_problems
    found += csvcheck.timestamp_problems(stamp)
    if kind not in INTERACTION_TYPES:
        found.append(csvcheck.bad("type", f"allowed: {', '.join(INTERACTION_TYPES)}", kind))
    if value and not math.isfinite(csvcheck.parse_float(value)):
        found.append(csvcheck.bad("value", "not a finite number", value))
    return "; ".join(found)


def _count_lines(path: Path) -> int:
    """Lines of a file (for the progress bar), counted on raw bytes."""
    count = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


# Writing.


class _Load:
    """Writes checked rows into the open transaction; after any problem it only checks."""

    def __init__(self, conn: Connection, catalog: str, problems: Problems) -> None:
        self.conn = conn
        self.catalog = catalog
        self.problems = problems
        self.items_added = self.items_updated = 0
        self.users_added = self.users_updated = 0
        self.n_interactions = self.n_duplicates = 0

    def summary(self) -> CatalogIngestSummary:
        return CatalogIngestSummary(
            catalog=self.catalog,
            items_added=self.items_added,
            items_updated=self.items_updated,
            users_added=self.users_added,
            users_updated=self.users_updated,
            interactions=self.n_interactions,
            duplicate_interactions=self.n_duplicates,
        )

    def items(
        self, rows: Sequence[_ItemRow], stored: dict[str, int], columns: dict[str, int]
    ) -> None:
        fresh = [row for row in rows if row[0] not in stored]
        known = [row for row in rows if row[0] in stored]
        if fresh:
            item_ids, *values = zip(*fresh, strict=True)
            fields = ItemFields(**dict(zip(ITEM_OPTIONAL_COLUMNS, values, strict=True)))
            self.items_added = insert_items(self.conn, self.catalog, item_ids, fields)
        present = [name for name in ITEM_OPTIONAL_COLUMNS if name in columns]
        if known and present:
            position = {name: i + 1 for i, name in enumerate(ITEM_OPTIONAL_COLUMNS)}
            changed = {name: [row[position[name]] for row in known] for name in present}
            row_ids = [stored[row[0]] for row in known]
            update_items(self.conn, row_ids, ItemFields(**changed))
        self.items_updated = len(known)

    def users(self, profiles: Sequence[tuple[str, dict[str, str]]]) -> None:
        if not profiles:
            return
        stored = stored_users(self.conn, self.catalog)
        fresh = [(user, features) for user, features in profiles if user not in stored]
        if fresh:
            self.users_added = insert_users(
                self.conn,
                self.catalog,
                [user for user, _ in fresh],
                [features for _, features in fresh],
            )
        known = [(stored[user], features) for user, features in profiles if user in stored]
        update_user_features(
            self.conn,
            [user.row_id for user, _ in known],
            [{**user.features, **features} for user, features in known],
        )
        self.users_updated = len(known)

    def interactions(
        self, log: CsvLog, known_items: set[str], unknown: str, on_line: Callable[[int], None]
    ) -> None:
        # How many times each stored row is, by its hash: a 64-bit hash instead of the tuple
        # keeps a million stored rows in about 100 MB; two different rows colliding among
        # millions is a chance of order 1e-7.
        stored = Counter(map(hash, stored_interactions(self.conn, self.catalog)))
        for chunk in _interaction_chunks(log, known_items, unknown, self.problems, on_line):
            if self.problems.count:
                continue  # keep checking the rest, write nothing more
            if stored:
                fresh = []
                for row in chunk:
                    key = hash(row)
                    if stored[key] > 0:
                        stored[key] -= 1
                        self.n_duplicates += 1
                    else:
                        fresh.append(row)
                chunk = fresh
            if chunk:
                users, items, kinds, values, seconds = zip(*chunk, strict=True)
                self.n_interactions += insert_interactions(
                    self.conn,
                    self.catalog,
                    user_ids=users,
                    item_ids=items,
                    types=kinds,
                    values=values,
                    seconds=seconds,
                )
