"""The model registry: the one module that reads and writes the `models` table.

Every variant strategy that `abplatform train` fits and exports is registered here as a
`candidate`, with a version counted per experiment and variant (1, 2, ...). Statuses:

- ``candidate``: registered, not served by ``model: latest``; a variant may still pin it
  by id (``model: 7``), e.g. to A/B-test a new model against the serving one.
- ``serving``: `promote` made it servable; ``latest`` is the newest (highest version)
  serving model of an experiment and variant. Several may serve at once (pins keep
  working); rolling back is retiring the newer one.
- ``retired``: terminal. `retire` takes a model out of service for good: it can neither
  be promoted again nor pinned (train again to bring the configuration back).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast, get_args

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from abplatform.artifacts import verify_artifact
from abplatform.errors import AbplatformError, NotFoundError
from abplatform.storage import models as m
from abplatform.storage.repository import utcnow

ModelStatus = Literal["candidate", "serving", "retired"]
MODEL_STATUSES: tuple[ModelStatus, ...] = get_args(ModelStatus)
LATEST = "latest"
"""The pin that resolves to the newest serving model of an experiment and variant."""
REGISTER_ATTEMPTS = 20
"""Tries of `register` when a concurrent writer took the version it counted."""
_VERSION_CONSTRAINT = "uq_models_version"


class ModelRefused(AbplatformError):
    """A registered model that cannot serve where it was asked to (kind, status, catalogue)."""


class NoServingModel(AbplatformError):
    """``model: latest`` for an experiment and variant that has no serving model."""


@dataclass(frozen=True)
class ModelRecord:
    """A registered model as stored."""

    id: int
    experiment: str
    variant: str
    version: int
    kind: str
    params: dict[str, Any]
    params_hash: str
    seed: int
    catalog: str
    history_cutoff: datetime | None
    history_rows: int
    artifact_path: str
    artifact_sha256: str
    metrics: dict[str, float]
    status: ModelStatus
    created_at: datetime
    status_changed_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Every field, times as ISO 8601 (UTC, no offset): the JSON of CLI and HTTP."""
        cutoff = self.history_cutoff
        return {
            "id": self.id,
            "experiment": self.experiment,
            "variant": self.variant,
            "version": self.version,
            "kind": self.kind,
            "params": self.params,
            "params_hash": self.params_hash,
            "seed": self.seed,
            "catalog": self.catalog,
            "history_cutoff": None if cutoff is None else cutoff.isoformat(),
            "history_rows": self.history_rows,
            "artifact_path": self.artifact_path,
            "artifact_sha256": self.artifact_sha256,
            "metrics": dict(self.metrics),
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "status_changed_at": self.status_changed_at.isoformat(),
        }


def params_hash(kind: str, params: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON (sorted keys, no spaces) of ``{kind, params}``."""
    canonical = json.dumps(
        {"kind": kind, "params": params}, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _record(row: m.RegisteredModel) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        experiment=row.experiment,
        variant=row.variant,
        version=row.version,
        kind=row.kind,
        params=dict(row.params),
        params_hash=row.params_hash,
        seed=int(row.seed),
        catalog=row.catalog,
        history_cutoff=row.history_cutoff,
        history_rows=int(row.history_rows),
        artifact_path=row.artifact_path,
        artifact_sha256=row.artifact_sha256,
        metrics={str(k): float(v) for k, v in dict(row.metrics).items()},
        status=cast(ModelStatus, row.status),
        created_at=row.created_at,
        status_changed_at=row.status_changed_at,
    )


def _check_register(
    experiment: str, variant: str, kind: str, artifact_sha256: str, metrics: Mapping[str, float]
) -> dict[str, float]:
    """The metrics as floats, or an error naming the bad field and its value."""
    for field, text in (("experiment", experiment), ("variant", variant), ("kind", kind)):
        if not text or len(text) > (64 if field == "kind" else 128) or "\x00" in text:
            raise AbplatformError(f"cannot register a model: bad {field} {text!r}")
    if len(artifact_sha256) != 64 or any(c not in "0123456789abcdef" for c in artifact_sha256):
        raise AbplatformError(
            f"cannot register a model: artifact_sha256 must be 64 hex digits "
            f"(got {artifact_sha256!r})"
        )
    out: dict[str, float] = {}
    for name, value in metrics.items():
        number = float(value)
        if not math.isfinite(number):
            raise AbplatformError(
                f"cannot register a model: metric {name!r} is not finite (got {value!r})",
                hint="leave undefined metrics out",
            )
        out[str(name)] = number
    return out


def _take_write_lock(session: Session) -> None:
    """On SQLite, open the write transaction before counting versions.

    The driver begins a transaction only at the first write; a write that changes nothing
    takes SQLite's one write lock now, so a concurrent writer waits (busy timeout) instead
    of counting the same version. It also puts the savepoint below inside that transaction
    (an outermost SQLite savepoint would commit on release). PostgreSQL needs neither: a
    clash there is a unique violation, retried.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(m.RegisteredModel)
            .where(m.RegisteredModel.id == -1)
            .values(version=m.RegisteredModel.version)
            .execution_options(synchronize_session=False)
        )


def _is_version_clash(exc: IntegrityError) -> bool:
    text = str(exc.orig).lower()
    return _VERSION_CONSTRAINT in text or "models.experiment, models.variant" in text


def register(
    session: Session,
    *,
    experiment: str,
    variant: str,
    kind: str,
    params: Mapping[str, Any],
    seed: int,
    catalog: str,
    history_cutoff: datetime | None,
    history_rows: int,
    artifact_path: str | Path,
    artifact_sha256: str,
    metrics: Mapping[str, float],
) -> ModelRecord:
    """Record a trained model as a `candidate` with the next version of its variant.

    The version is one more than the highest of (experiment, variant). Two writers racing
    for it: on PostgreSQL the second hits the unique constraint and counts again (inside
    a savepoint, so the caller's transaction survives); on SQLite the second waits for the
    first's write lock. `artifact_path` is stored resolved (absolute). Non-finite metrics
    and malformed names or checksums are refused.
    """
    defined = _check_register(experiment, variant, kind, artifact_sha256, metrics)
    params_doc = json.loads(json.dumps(dict(params), allow_nan=False))
    now = utcnow()
    for attempt in range(REGISTER_ATTEMPTS):
        _take_write_lock(session)
        try:
            with session.begin_nested():
                highest = session.scalar(
                    select(func.max(m.RegisteredModel.version)).where(
                        m.RegisteredModel.experiment == experiment,
                        m.RegisteredModel.variant == variant,
                    )
                )
                row = m.RegisteredModel(
                    experiment=experiment,
                    variant=variant,
                    version=(highest or 0) + 1,
                    kind=kind,
                    params=params_doc,
                    params_hash=params_hash(kind, params_doc),
                    seed=int(seed),
                    catalog=catalog,
                    history_cutoff=history_cutoff,
                    history_rows=int(history_rows),
                    artifact_path=str(Path(artifact_path).resolve()),
                    artifact_sha256=artifact_sha256,
                    metrics=defined,
                    status="candidate",
                    created_at=now,
                    status_changed_at=now,
                )
                session.add(row)
                session.flush()
            return _record(row)
        except IntegrityError as exc:
            if not _is_version_clash(exc) or attempt == REGISTER_ATTEMPTS - 1:
                raise
            time.sleep(0.001 * (attempt + 1))  # let the other writer commit
    raise AssertionError("unreachable")  # pragma: no cover


def list_models(session: Session, experiment: str | None = None) -> list[ModelRecord]:
    """Registered models (of one experiment), by experiment, variant and version."""
    query = select(m.RegisteredModel)
    if experiment is not None:
        query = query.where(m.RegisteredModel.experiment == experiment)
    rows = session.scalars(
        query.order_by(
            m.RegisteredModel.experiment, m.RegisteredModel.variant, m.RegisteredModel.version
        )
    ).all()
    return [_record(row) for row in rows]


def _row(session: Session, model_id: int) -> m.RegisteredModel:
    row = session.get(m.RegisteredModel, model_id)
    if row is None:
        raise NotFoundError(
            f"no model {model_id} in this database",
            hint="list the registered models: abplatform models list (or pass the right --db)",
        )
    return row


def get_model(session: Session, model_id: int) -> ModelRecord:
    """The registered model with this id; NotFoundError naming the id."""
    return _record(_row(session, model_id))


def get_models(session: Session, model_ids: Collection[int]) -> dict[int, ModelRecord]:
    """The registered models with these ids, by id (ids not registered are left out)."""
    if not model_ids:
        return {}
    rows = session.scalars(
        select(m.RegisteredModel).where(m.RegisteredModel.id.in_(sorted(set(model_ids))))
    ).all()
    return {row.id: _record(row) for row in rows}


def promote(session: Session, model_id: int) -> ModelRecord:
    """Make a candidate servable (``serving``); its artifact must still match its checksum.

    Promoting a serving model changes nothing; a retired one is refused (retirement is
    final). A missing or changed artifact raises `ArtifactError` and nothing changes.
    """
    row = _row(session, model_id)
    if row.status == "retired":
        raise ModelRefused(
            f"model {model_id} ({row.experiment}/{row.variant} v{row.version}) is retired "
            "and cannot be promoted again",
            hint="train again (abplatform train FILE) and promote the new model",
        )
    if row.status != "serving":
        verify_artifact(row.artifact_path, row.artifact_sha256)
        row.status = "serving"
        row.status_changed_at = utcnow()
        session.flush()
    return _record(row)


def retire(session: Session, model_id: int) -> ModelRecord:
    """Take a model out of service for good (``retired``); retiring twice changes nothing."""
    row = _row(session, model_id)
    if row.status != "retired":
        row.status = "retired"
        row.status_changed_at = utcnow()
        session.flush()
    return _record(row)


def resolve(
    session: Session,
    experiment: str,
    variant: str,
    pin: int | str,
    *,
    kind: str | None = None,
    catalog: str | None = None,
) -> ModelRecord:
    """The model a variant's ``model:`` pin names: an id, or ``"latest"``.

    ``latest`` is the newest (highest version) ``serving`` model of the experiment and
    variant; none is a `NoServingModel` saying how to make one. A pinned id must exist
    (NotFoundError), must not be retired, and, when given, must be of `kind` and trained
    on `catalog` (`ModelRefused` names both sides). A pinned candidate is served: pinning
    is how a model is tried before it is promoted.
    """
    if pin == LATEST:
        row = session.scalars(
            select(m.RegisteredModel)
            .where(
                m.RegisteredModel.experiment == experiment,
                m.RegisteredModel.variant == variant,
                m.RegisteredModel.status == "serving",
            )
            .order_by(m.RegisteredModel.version.desc())
            .limit(1)
        ).one_or_none()
        if row is None:
            raise NoServingModel(
                f"variant {variant!r} of experiment {experiment!r} pins model: latest, "
                "but no model of it is serving",
                hint="run `abplatform train FILE`, then `abplatform models promote ID` "
                "(abplatform models list shows the ids)",
            )
        record = _record(row)
    elif isinstance(pin, int) and not isinstance(pin, bool):
        record = get_model(session, pin)
    else:
        raise AbplatformError(
            f"model: must be a model id or {LATEST!r} (got {pin!r})",
            hint="e.g. `model: 7` or `model: latest`",
        )
    where = f"model {record.id} ({record.experiment}/{record.variant} v{record.version})"
    if record.status == "retired":
        raise ModelRefused(
            f"variant {variant!r} of experiment {experiment!r} pins {where}, which is retired",
            hint="pin a serving or candidate model (abplatform models list), or `latest`",
        )
    if kind is not None and record.kind != kind:
        raise ModelRefused(
            f"variant {variant!r} of experiment {experiment!r} has strategy kind {kind!r}, "
            f"but {where} is a {record.kind!r} model",
            hint=f"pin a {kind!r} model (abplatform models list --experiment KEY)",
        )
    if catalog is not None and record.catalog != catalog:
        raise ModelRefused(
            f"experiment {experiment!r} serves catalogue {catalog!r}, but {where} was "
            f"trained on catalogue {record.catalog!r}",
            hint="train on the experiment's catalogue (abplatform train FILE --catalog NAME)",
        )
    return record
