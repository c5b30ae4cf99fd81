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
from abplatform.errors import NotFoundError
from abplatform.storage import models as m


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


def save_experiment(session: Session, config: ExperimentConfig, catalog: str) -> StoredExperiment:
    """Insert or update an experiment (its config holds the variants); returns the stored one."""
    now = utcnow()
    row = session.scalars(select(m.Experiment).where(m.Experiment.key == config.key)).one_or_none()
    document = config.model_dump(mode="json")
    if row is None:
        row = m.Experiment(
            key=config.key,
            description=config.description,
            unit=config.unit,
            catalog=catalog,
            status="draft",
            config=document,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
    else:
        row.description = config.description
        row.unit = config.unit
        row.catalog = catalog
        row.config = document
        row.updated_at = now
    session.flush()
    return StoredExperiment(row.id, row.key, row.catalog, row.status, config)


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


def list_experiments(session: Session) -> list[StoredExperiment]:
    """All stored experiments, by key."""
    rows = session.scalars(select(m.Experiment).order_by(m.Experiment.key)).all()
    return [_stored(row) for row in rows]


def latest_simulation(session: Session, experiment_id: int) -> m.SimulationRun | None:
    """The newest simulation run of an experiment, if any."""
    return session.scalars(
        select(m.SimulationRun)
        .where(m.SimulationRun.experiment_id == experiment_id)
        .order_by(m.SimulationRun.id.desc())
        .limit(1)
    ).one_or_none()


def _bulk_delete(session: Session, statement: Any) -> None:
    # No identity-map synchronisation: fetching millions of deleted keys back costs seconds.
    session.execute(statement.execution_options(synchronize_session=False))


def clear_experiment_data(session: Session, experiment_id: int) -> None:
    """Delete an experiment's exposures, impressions, events, runs and bandit state.

    The definition stays.
    """
    exposure_ids = select(m.Exposure.id).where(m.Exposure.experiment_id == experiment_id)
    _bulk_delete(session, delete(m.Impression).where(m.Impression.exposure_id.in_(exposure_ids)))
    _bulk_delete(session, delete(m.Exposure).where(m.Exposure.experiment_id == experiment_id))
    _bulk_delete(session, delete(m.Event).where(m.Event.experiment_id == experiment_id))
    _bulk_delete(
        session, delete(m.SimulationRun).where(m.SimulationRun.experiment_id == experiment_id)
    )
    delete_bandit_rows(session.connection(), experiment_id)


def clear_catalog(session: Session, catalog: str) -> None:
    """Delete a catalogue's items, users and history."""
    _bulk_delete(session, delete(m.Interaction).where(m.Interaction.catalog == catalog))
    _bulk_delete(session, delete(m.User).where(m.User.catalog == catalog))
    _bulk_delete(session, delete(m.CatalogItem).where(m.CatalogItem.catalog == catalog))


def run_summary(run: m.SimulationRun | None) -> dict[str, Any] | None:
    """A JSON-able description of a simulation run."""
    if run is None:
        return None
    return {
        "id": run.id,
        "seed": run.seed,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "summary": run.summary,
    }
