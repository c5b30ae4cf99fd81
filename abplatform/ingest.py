"""Load real exposure and event logs from CSV files (and their online features), all or nothing."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from pathlib import Path

from sqlalchemy import Connection, Engine

from abplatform.config.models import ExperimentConfig
from abplatform.csvcheck import (
    CHUNK_ROWS,
    MAX_ID_LENGTH,
    CsvLog,
    Problems,
    bad,
    id_problems,
    parse_float,
    parse_int,
    parse_seconds,
    timestamp_problems,
)
from abplatform.domain import FEEDBACK_TYPES
from abplatform.storage.bulk import gc_paused, seconds_to_sql, sqlite_cache
from abplatform.storage.db import transaction
from abplatform.storage.exposure_ids import reserve_exposure_ids
from abplatform.storage.features import update_features
from abplatform.storage.repository import save_experiment
from abplatform.storage.rows import (
    EventColumns,
    EventRow,
    ExposureColumns,
    insert_events,
    insert_exposures,
    stored_event_ids,
    stored_exposures,
)

EXPOSURE_LOG_COLUMNS = ("unit_id", "variant", "timestamp")
EXPOSURE_LOG_OPTIONAL_COLUMNS = ("propensity", "scene", "slate_size")
EVENT_LOG_COLUMNS = ("unit_id", "type", "timestamp")
EVENT_LOG_OPTIONAL_COLUMNS = ("event_id", "item_id", "value")
"""The CSV logs' columns (the tables' are `storage.rows.EXPOSURE_COLUMNS`/`EVENT_COLUMNS`)."""

INGESTIBLE_EVENT_TYPES: tuple[str, ...] = FEEDBACK_TYPES
"""Event types a log may carry; impressions are derived from the exposures' `slate_size`."""

MAX_SCENE_LENGTH = 64
MAX_SLATE_SIZE = 2**31 - 1

# Checked rows: the first fields of `ExposureColumns` / `EventColumns`, in their order.
_ExposureRow = tuple[str, str, int, float, str | None, int]
_EventRow = tuple[str, str, str, str | None, float | None, int]


@dataclass(frozen=True)
class IngestSummary:
    """What a load wrote: exposures, new events, events already stored, distinct units seen."""

    exposures: int
    events: int
    duplicate_events: int
    units: int
    duplicate_exposures: int = 0
    featured_events: int = 0  # new events applied to the feature store
    unfeatured_events: int = 0  # new events that updated no features (unknown item or unit)


def ingest_logs(
    engine: Engine,
    config: ExperimentConfig,
    exposures: Path | None,
    events: Path | None,
    *,
    catalog: str | None = None,
    also: Callable[[Connection], None] | None = None,
) -> IngestSummary:
    """Save the experiment and load its exposure and event CSV logs in one transaction.

    Any bad row aborts the whole load (nothing is written, not even the experiment
    definition) with a `DataError` listing one line per bad row. Events whose
    `event_id` is already stored are skipped and counted, so re-ingesting a file is
    idempotent; without an `event_id` column the id is derived from the experiment key
    and the row's content. An exposure identical to a stored one (same unit, variant and
    timestamp) is skipped and counted too. `units` counts distinct unit ids in both files.
    `also(conn)`, if given, loads more of the same command's input in the same transaction
    once the logs are in; whatever it raises rolls the logs back too.

    The new events then update the feature store (`storage.features.update_features`, as
    `/v1/events` does) in the same transaction, in time order as one batch: one version
    step per unit. Events of an item outside the catalogue or of an unknown unit are stored
    but update nothing (counted in `unfeatured_events`).
    """
    problems = Problems()
    with ExitStack() as stack:
        exposure_log = CsvLog.open_if_given(
            exposures, EXPOSURE_LOG_COLUMNS, EXPOSURE_LOG_OPTIONAL_COLUMNS, stack, problems
        )
        event_log = CsvLog.open_if_given(
            events, EVENT_LOG_COLUMNS, EVENT_LOG_OPTIONAL_COLUMNS, stack, problems
        )
        problems.raise_if_any()
        with gc_paused(), transaction(engine) as session:
            stored = save_experiment(session, config, catalog or config.catalog)
            conn = session.connection()
            load = _Load(conn, stored.id, config, problems)
            with sqlite_cache(conn):
                if exposure_log is not None:
                    load.exposures(exposure_log)
                if event_log is not None:
                    load.events(event_log)
            # Raising inside the transaction rolls back every row and the experiment upsert.
            problems.raise_if_any()
            if also is not None:
                also(conn)
            featured, unfeatured = load.update_features()
    return IngestSummary(
        exposures=load.n_exposures,
        events=load.n_events,
        duplicate_events=load.n_duplicates,
        units=len(load.units),
        duplicate_exposures=load.n_duplicate_exposures,
        featured_events=featured,
        unfeatured_events=unfeatured,
    )


def _naive_utc(seconds: int) -> datetime:
    """Unix seconds as the naive UTC time the feature store reads."""
    return _EPOCH + timedelta(seconds=seconds)


_EPOCH = datetime(1970, 1, 1)


def _derived_event_id(
    key: str, seconds: int, unit: str, kind: str, stamp: str, item: str, value: str
) -> str:
    """A stable id from the experiment and the row's content, so re-ingesting is idempotent.

    The Unix-seconds prefix makes ids roughly time-ordered (like UUIDv7): a log's inserts
    then land near each other in the unique index instead of all over it.
    """
    content = "\x1f".join((key, unit, kind, stamp, item, value))
    digest = hashlib.sha1(content.encode("utf-8"), usedforsecurity=False).hexdigest()
    return f"{seconds:010d}-{digest}"


# Diagnosis of a bad row: only run once the fast checks have failed, so it may be slow.


def _exposure_problems(
    unit: str,
    variant: str,
    stamp: str,
    propensity: str,
    scene: str,
    slate_size: str,
    known: dict[str, float],
) -> str:
    problems = id_problems("unit_id", unit)
    weight = known.get(variant)
    if weight is None:
        problems.append(bad("variant", f"unknown variant; known: {', '.join(known)}", variant))
    problems += timestamp_problems(stamp)
    if propensity:
        if not 0.0 < parse_float(propensity) <= 1.0:
            problems.append(bad("propensity", "not a number in (0, 1]", propensity))
    elif weight is not None and weight <= 0.0:
        why = f"missing, and variant {variant!r} has weight 0 in the config, so no default"
        problems.append(bad("propensity", why, propensity))
    if len(scene) > MAX_SCENE_LENGTH:
        problems.append(bad("scene", f"longer than {MAX_SCENE_LENGTH} characters", scene))
    if slate_size and not 0 <= parse_int(slate_size) <= MAX_SLATE_SIZE:
        problems.append(bad("slate_size", "not a whole number >= 0", slate_size))
    return "; ".join(problems)


def _event_problems(
    unit: str, kind: str, stamp: str, item: str, value: str, event_id: str, duplicate: str
) -> str:
    problems = id_problems("unit_id", unit)
    if kind not in INGESTIBLE_EVENT_TYPES:
        why = "impressions come from the exposures' slate_size; " * (kind == "impression")
        problems.append(bad("type", f"{why}allowed: {', '.join(INGESTIBLE_EVENT_TYPES)}", kind))
    problems += timestamp_problems(stamp)
    problems += id_problems("item_id", item, required=False)
    if value and not math.isfinite(parse_float(value)):
        problems.append(bad("value", "not a finite number", value))
    problems += id_problems("event_id", event_id, required=False)
    if duplicate:
        problems.append(duplicate)
    return "; ".join(problems)


class _Load:
    """Streams validated rows into the open transaction chunk by chunk; stops writing at a bad row.

    After the first bad row the rest of the input is still checked, so one run reports
    every bad row; the caller then raises and the transaction rolls back.
    """

    def __init__(
        self, conn: Connection, experiment_id: int, config: ExperimentConfig, problems: Problems
    ) -> None:
        self.conn = conn
        self.experiment_id = experiment_id
        self.key = config.key
        self.weights = {variant.key: variant.weight for variant in config.variants}
        self.problems = problems
        self.units: set[str] = set()
        self.n_exposures = 0
        self.n_events = 0
        self.n_duplicates = 0
        self.n_duplicate_exposures = 0
        self.fresh_events: list[_EventRow] = []  # stored by this load: the store's input

    def exposures(self, log: CsvLog) -> None:
        if not log.columns:  # an empty file
            return
        i_unit, i_variant, i_ts = (log.columns[c] for c in EXPOSURE_LOG_COLUMNS)
        i_prop, i_scene, i_slate = (log.columns.get(c) for c in EXPOSURE_LOG_OPTIONAL_COLUMNS)
        weights, add_unit = self.weights, self.units.add
        chunk: list[_ExposureRow] = []
        for line, row in log.rows(self.problems):
            unit = row[i_unit].strip()
            variant = row[i_variant].strip()
            stamp = row[i_ts].strip()
            raw_propensity = row[i_prop].strip() if i_prop is not None else ""
            scene = row[i_scene].strip() if i_scene is not None else ""
            raw_slate_size = row[i_slate].strip() if i_slate is not None else ""
            weight = weights.get(variant)
            ts = parse_seconds(stamp)
            # An unknown variant has no weight; 0.0 then fails the propensity check below.
            propensity = parse_float(raw_propensity) if raw_propensity else (weight or 0.0)
            slate_size = parse_int(raw_slate_size) if raw_slate_size else 0
            if (
                0 < len(unit) <= MAX_ID_LENGTH
                and weight is not None
                and ts is not None
                and 0.0 < propensity <= 1.0
                and len(scene) <= MAX_SCENE_LENGTH
                and 0 <= slate_size <= MAX_SLATE_SIZE
            ):
                add_unit(unit)
                chunk.append((variant, unit, ts, propensity, scene or None, slate_size))
                if len(chunk) >= CHUNK_ROWS:
                    self._write_exposures(chunk)
            else:
                what = _exposure_problems(
                    unit, variant, stamp, raw_propensity, scene, raw_slate_size, weights
                )
                self.problems.add(log.name, line, what)
        self._write_exposures(chunk)

    def _write_exposures(self, chunk: list[_ExposureRow]) -> None:
        if chunk and not self.problems.count:
            stamps = seconds_to_sql([row[2] for row in chunk])
            stored = stored_exposures(self.conn, self.experiment_id, {row[1] for row in chunk})
            fresh: list[_ExposureRow] = []
            for row, stamp in zip(chunk, stamps, strict=True):
                key = (row[1], row[0], stamp)
                if key in stored:
                    self.n_duplicate_exposures += 1
                else:
                    stored.add(key)  # identical rows within the load count once too
                    fresh.append(row)
            chunk[:] = fresh
        if chunk and not self.problems.count:
            # Reserved like the API's writer does, so a running server's ids never clash.
            ids = reserve_exposure_ids(self.conn, len(chunk))
            exposures = ExposureColumns(*zip(*chunk, strict=True))
            self.n_exposures += insert_exposures(self.conn, ids, self.experiment_id, exposures)
        chunk.clear()

    def events(self, log: CsvLog) -> None:
        if not log.columns:  # an empty file
            return
        i_unit, i_type, i_ts = (log.columns[c] for c in EVENT_LOG_COLUMNS)
        i_event, i_item, i_value = (log.columns.get(c) for c in EVENT_LOG_OPTIONAL_COLUMNS)
        allowed = frozenset(INGESTIBLE_EVENT_TYPES)
        key, add_unit = self.key, self.units.add
        same_content = "" if i_event is not None else " (same content gives the same derived id)"
        first_line: dict[str, int] = {}
        chunk: list[_EventRow] = []
        for line, row in log.rows(self.problems):
            unit = row[i_unit].strip()
            kind = row[i_type].strip()
            stamp = row[i_ts].strip()
            item = row[i_item].strip() if i_item is not None else ""
            raw_value = row[i_value].strip() if i_value is not None else ""
            event_id = row[i_event].strip() if i_event is not None else ""
            ts = parse_seconds(stamp)
            value = parse_float(raw_value) if raw_value else None
            valid = (
                0 < len(unit) <= MAX_ID_LENGTH
                and kind in allowed
                and len(item) <= MAX_ID_LENGTH
                and (value is None or math.isfinite(value))
                and len(event_id) <= MAX_ID_LENGTH
            )
            if valid and ts is not None and not event_id:
                event_id = _derived_event_id(key, ts, unit, kind, stamp, item, raw_value)
            duplicate = ""
            if event_id and len(event_id) <= MAX_ID_LENGTH:
                earlier = first_line.setdefault(event_id, line)
                if earlier != line:
                    why = f"duplicate of line {earlier}{same_content}"
                    duplicate = bad("event_id", why, event_id)
            if valid and ts is not None and not duplicate:
                add_unit(unit)
                chunk.append((event_id, unit, kind, item or None, value, ts))
                if len(chunk) >= CHUNK_ROWS:
                    self._write_events(chunk)
            else:
                what = _event_problems(unit, kind, stamp, item, raw_value, event_id, duplicate)
                self.problems.add(log.name, line, what)
        self._write_events(chunk)

    def _write_events(self, chunk: list[_EventRow]) -> None:
        if chunk and not self.problems.count:
            # In event_id order, lookups and inserts walk the unique index's pages in order.
            chunk.sort(key=itemgetter(0))
            stored = stored_event_ids(self.conn, [row[0] for row in chunk])
            fresh = [row for row in chunk if row[0] not in stored] if stored else chunk
            self.n_duplicates += len(chunk) - len(fresh)
            if fresh:
                events = EventColumns(*zip(*fresh, strict=True))
                self.n_events += insert_events(self.conn, self.experiment_id, events)
                self.fresh_events.extend(fresh)
        chunk.clear()

    def update_features(self) -> tuple[int, int]:
        """Apply the events this load stored to the feature store; (applied, left out)."""
        if not self.fresh_events:
            return 0, 0
        # Time order (then file order: the sort is stable), so a cart sees its add before
        # the purchase; in one batch, one version step per unit.
        self.fresh_events.sort(key=itemgetter(5))
        batch = [
            EventRow(event_id, self.experiment_id, None, unit, kind, item, value, _naive_utc(ts))
            for event_id, unit, kind, item, value, ts in self.fresh_events
        ]
        update = update_features(self.conn, [batch], {e.event_id for e in batch})
        self.fresh_events = []
        return update.applied[0], len(update.unfeatured[0])
