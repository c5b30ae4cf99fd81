"""Repository verbs over the storage models: save and fetch experiments and runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from abplatform.bandit.tables import delete_bandit_rows
from abplatform.config.loader import validate_config
from abplatform.config.models import ExperimentConfig
from abplatform.errors import AbplatformError, NotFoundError
from abplatform.storage import models as m
from abplatform.storage.changes import experiment_changed
from abplatform.storage.rows import delete_experiment_rows


def utcnow() -> datetime:
    """Current UTC time without tzinfo, as stored in the database."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class StoredExperiment:
    """An experiment row with its validated config."""

    id: int
    key: str
    catalog: str
    status: str
    config: ExperimentConfig


def save_experiment(
    session: Session, config: ExperimentConfig, catalog: str | None, *, discard_data: bool = False
) -> StoredExperiment:
    """Insert or update an experiment (its config holds the variants); returns the stored one.

    `catalog` None keeps a stored experiment's catalogue (a new one gets `default`). An
    update that would orphan stored exposures (another catalogue, or a variant with
    exposures no longer in the config) raises `OrphanedDataError`, unless `discard_data`
    (the caller deletes the experiment's data next, as a re-simulation does).
    """
    now = utcnow()
    row = session.scalars(select(m.Experiment).where(m.Experiment.key == config.key)).one_or_none()
    document = config.model_dump(mode="json")
    if row is None:
        row = m.Experiment(
            key=config.key,
            description=config.description,
            unit=config.unit,
            catalog=catalog or "default",
            status="draft",
            config=document,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
    else:
        chosen = catalog or row.catalog
        if not discard_data:
            _refuse_orphans(session, row, config, chosen)
        row.description = config.description
        row.unit = config.unit
        row.catalog = chosen
        row.config = document
        row.updated_at = now
    session.flush()
    experiment_changed(session, row.key)  # every server process re-reads it
    return StoredExperiment(row.id, row.key, row.catalog, row.status, config)


STATUSES = ("draft", "running", "stopped")


def set_status(session: Session, key: str, status: str) -> StoredExperiment:
    """Set the experiment's status (`STATUSES`); every server process re-reads it at commit.

    NotFoundError lists the known keys; the strategies are refitted on the next assignment
    (`updated_at` moves).
    """
    if status not in STATUSES:
        raise AbplatformError(
            f"status: {status!r} is not one of {', '.join(STATUSES)}",
            hint="start an experiment with `running`, stop it with `stopped`",
        )
    stored = get_experiment(session, key)  # 404 listing the known keys
    row = session.scalars(select(m.Experiment).where(m.Experiment.key == key)).one()
    row.status = status
    row.updated_at = utcnow()
    session.flush()
    experiment_changed(session, key)
    return StoredExperiment(stored.id, stored.key, stored.catalog, status, stored.config)


def touch_experiment(session: Session, key: str) -> StoredExperiment | None:
    """Mark the experiment changed (e.g. its served model), so servers reload it at commit.

    None when no experiment has that key (a model may be trained before it is created).
    """
    row = session.scalars(select(m.Experiment).where(m.Experiment.key == key)).one_or_none()
    if row is None:
        return None
    row.updated_at = utcnow()
    session.flush()
    experiment_changed(session, key)
    return _stored(row)


class OrphanedDataError(AbplatformError):
    """An experiment update that would leave stored exposures without their context."""


def _refuse_orphans(
    session: Session, row: m.Experiment, config: ExperimentConfig, catalog: str
) -> None:
    """Raise if stored exposures would lose their catalogue or their variant."""
    exposures = select(m.Exposure.variant).where(m.Exposure.experiment_id == row.id)
    if session.execute(exposures.limit(1)).first() is None:
        return
    key = config.key
    if catalog != row.catalog:
        raise OrphanedDataError(
            f"experiment {key!r} has exposures against catalogue {row.catalog!r}; "
            f"catalog: {catalog!r} would orphan them",
            hint=f"keep `catalog: {row.catalog}` (or leave `catalog:` out), "
            "or store the changed experiment under a new key",
        )
    kept = {variant.key for variant in config.variants}
    removed = sorted({v["key"] for v in row.config.get("variants", [])} - kept)
    if not removed:
        return
    orphaned = session.scalars(
        exposures.where(m.Exposure.variant.in_(removed)).distinct().order_by(m.Exposure.variant)
    ).all()
    if orphaned:
        raise OrphanedDataError(
            f"experiment {key!r} has exposures of variant{'s' if len(orphaned) > 1 else ''} "
            f"{', '.join(map(repr, orphaned))}, which variants: no longer lists "
            f"(got {', '.join(sorted(kept))}); that would orphan them",
            hint="keep every variant that has exposures (weights may change), "
            "or store the changed experiment under a new key",
        )


def _stored(row: m.Experiment) -> StoredExperiment:
    return StoredExperiment(
        row.id, row.key, row.catalog, row.status, validate_config(row.config, row.key)
    )


def get_experiment(session: Session, key: str) -> StoredExperiment:
    """The stored experiment with this key; NotFoundError lists the known keys."""
    row = session.scalars(select(m.Experiment).where(m.Experiment.key == key)).one_or_none()
    if row is None:
        known = session.scalars(select(m.Experiment.key).order_by(m.Experiment.key)).all()
        raise NotFoundError(
            f"no experiment {key!r} in this database; known: {', '.join(known) or '(none)'}",
            hint="run `abplatform simulate FILE` or `abplatform ingest FILE` first, "
            "or pass the right --db",
        )
    return _stored(row)


def stored_catalog(session: Session, key: str) -> str | None:
    """The catalogue of the stored experiment with this key (None: not stored)."""
    return session.scalars(
        select(m.Experiment.catalog).where(m.Experiment.key == key)
    ).one_or_none()


def list_experiments(session: Session) -> list[StoredExperiment]:
    """All stored experiments, by key."""
    rows = session.scalars(select(m.Experiment).order_by(m.Experiment.key)).all()
    return [_stored(row) for row in rows]


@dataclass(frozen=True)
class StoredRun:
    """A simulation run as stored: seed, status, times, ground truth and summary."""

    id: int
    seed: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    ground_truth: dict[str, Any] | None
    summary: dict[str, Any] | None


def start_run(session: Session, experiment_id: int, seed: int, config: dict[str, Any]) -> int:
    """Record a simulation run of an experiment as running; return its id."""
    run = m.SimulationRun(
        experiment_id=experiment_id,
        seed=seed,
        status="running",
        config=config,
        started_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run.id


def finish_run(
    session: Session,
    run_id: int,
    *,
    ground_truth: dict[str, Any],
    summary: dict[str, Any],
) -> None:
    """Mark a run completed, with the ground truth and summary it stores."""
    run = session.get(m.SimulationRun, run_id)
    if run is None:
        raise NotFoundError(f"no simulation run {run_id} in this database")
    run.status = "completed"
    run.finished_at = utcnow()
    run.ground_truth = ground_truth
    run.summary = summary
    session.flush()


def latest_simulation(session: Session, experiment_id: int) -> StoredRun | None:
    """The newest simulation run of an experiment, if any."""
    run = session.scalars(
        select(m.SimulationRun)
        .where(m.SimulationRun.experiment_id == experiment_id)
        .order_by(m.SimulationRun.id.desc())
        .limit(1)
    ).one_or_none()
    if run is None:
        return None
    return StoredRun(
        run.id,
        int(run.seed),
        run.status,
        run.started_at,
        run.finished_at,
        run.ground_truth,
        run.summary,
    )


def clear_experiment_data(session: Session, experiment_id: int) -> None:
    """Delete an experiment's exposures, impressions, events, runs and bandit state.

    The definition stays.
    """
    delete_experiment_rows(session.connection(), experiment_id)
    # No identity-map synchronisation: fetching the deleted keys back is not needed.
    session.execute(
        delete(m.SimulationRun)
        .where(m.SimulationRun.experiment_id == experiment_id)
        .execution_options(synchronize_session=False)
    )
    delete_bandit_rows(session.connection(), experiment_id)
