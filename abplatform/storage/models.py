"""SQLAlchemy 2.0 table models; the schema lives here and in the Alembic migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY, so BigInteger maps to INTEGER there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Experiment(Base):
    """An experiment definition as loaded from YAML."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    unit: Mapped[str] = mapped_column(String(64), default="user")
    catalog: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class SimulationRun(Base):
    """A simulator run of an experiment, with its ground truth."""

    __tablename__ = "simulation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    ground_truth: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class CatalogItem(Base):
    """An item of a shop's catalogue."""

    __tablename__ = "catalog_items"
    __table_args__ = (UniqueConstraint("catalog", "item_id", name="uq_catalog_items_item"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    catalog: Mapped[str] = mapped_column(String(128))
    item_id: Mapped[str] = mapped_column(String(128))
    category: Mapped[str | None] = mapped_column(String(128), nullable=True)
    brand: Mapped[str | None] = mapped_column(String(128), nullable=True)
    price: Mapped[float | None] = mapped_column(Float, nullable=True)
    title: Mapped[str | None] = mapped_column(Text, nullable=True)
    tags: Mapped[str | None] = mapped_column(Text, nullable=True)


class User(Base):
    """A user (the unit of randomisation) with profile features."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("catalog", "user_id", name="uq_users_user"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    catalog: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128))
    features: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Interaction(Base):
    """A history interaction (outside any experiment) that strategies fit on."""

    __tablename__ = "interactions"
    __table_args__ = (Index("ix_interactions_catalog_ts", "catalog", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    catalog: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128))
    item_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    ts: Mapped[datetime] = mapped_column(DateTime)


class Exposure(Base):
    """A unit shown a variant's slate: the assignment decision with its propensity."""

    __tablename__ = "exposures"
    __table_args__ = (
        Index("ix_exposures_experiment_unit", "experiment_id", "unit_id"),
        # A unit's first exposure (MIN(ts)) in one probe: the CUPED pre-period (migration 0006).
        Index("ix_exposures_experiment_unit_ts", "experiment_id", "unit_id", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    variant: Mapped[str] = mapped_column(String(128))
    unit_id: Mapped[str] = mapped_column(String(128))
    ts: Mapped[datetime] = mapped_column(DateTime)
    propensity: Mapped[float] = mapped_column(Float)
    bucket: Mapped[float | None] = mapped_column(Float, nullable=True)
    scene: Mapped[str | None] = mapped_column(String(64), nullable=True)
    slate_size: Mapped[int] = mapped_column(Integer, default=0)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Version of the bandit weights the decision was drawn from; NULL for hashed experiments.
    weight_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The registered model that served the slate (migration 0008); NULL when the strategy was
    # fitted at start, or for rows older than the registry. No cascade: such a model stays.
    model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", name="fk_exposures_model_id"), nullable=True
    )


class Impression(Base):
    """One slate position shown in an exposure."""

    __tablename__ = "impressions"
    # One B-tree keyed by (exposure, position) on SQLite: the bulk path appends in key order.
    __table_args__ = ({"sqlite_with_rowid": False},)

    # No foreign key: impressions are the largest table and are always written in the same
    # transaction as their exposure; a per-row parent check would cost a third of the write.
    exposure_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(String(128))
    # The retrieval source that found the item (a pipeline's stage name, migration 0011);
    # NULL for strategies without sources and for older rows.
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ItemImpressions(Base):
    """How often a variant's slates showed an item (by retrieval source), kept as slates are stored.

    Derived from `impressions` in the same transaction that stores them (migration 0009), so
    ranking quality (coverage, novelty) reads a row per shown item instead of every
    impression. `source` is ``""`` for a slate whose items carry none.
    """

    __tablename__ = "item_impressions"
    __table_args__ = ({"sqlite_with_rowid": False},)

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    variant: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    impressions: Mapped[int] = mapped_column(BigInteger)


class Event(Base):
    """A feedback event from a unit (click, purchase, ...), idempotent by `event_id`."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_experiment_unit", "experiment_id", "unit_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), nullable=True
    )
    exposure_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    unit_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    item_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    ts: Mapped[datetime] = mapped_column(DateTime)
    # The position of `item_id` in its exposure's slate (its first, if shown twice), found
    # when the event is stored (migration 0010); NULL when the item was not in the slate,
    # the event has no exposure or item, or its exposure was not stored yet.
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)


class UnitFeature(Base):
    """A unit's online features in a catalogue: recent interactions, cart, counters, version.

    Written only by `abplatform.storage.features`, in the transaction storing the events.
    """

    __tablename__ = "unit_features"
    # Every event batch rewrites its units' rows: room on each page (PostgreSQL) keeps the
    # updates HOT (no new index entries, dead versions pruned in place).
    __table_args__ = ({"postgresql_with": {"fillfactor": 40}},)

    catalog: Mapped[str] = mapped_column(String(128), primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    recent: Mapped[str] = mapped_column(Text)  # a JSON [item, type, unix seconds] per line
    cart: Mapped[str] = mapped_column(Text)  # JSON [item, ...], oldest first
    counts: Mapped[str] = mapped_column(Text)  # JSON {event type: count}
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class ApiKey(Base):
    """An API key: a public key id for look-up, scopes, and a salted hash of the secret."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[str] = mapped_column(String(128))
    salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class BanditState(Base):
    """Posterior sufficient statistics of one bandit arm in one context, updated by increments."""

    __tablename__ = "bandit_state"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    # '' when the experiment has no context.
    context: Mapped[str] = mapped_column(String(64), primary_key=True)
    arm: Mapped[str] = mapped_column(String(128), primary_key=True)
    units: Mapped[int] = mapped_column(BigInteger)
    reward_sum: Mapped[float] = mapped_column(Float)
    reward_sq_sum: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class BanditWeight(Base):
    """One arm's allocation weight in one context from a weight version on (the history)."""

    __tablename__ = "bandit_weights"
    __table_args__ = (
        UniqueConstraint(
            "experiment_id", "version", "context", "arm", name="uq_bandit_weights_version_arm"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    context: Mapped[str] = mapped_column(String(64))
    arm: Mapped[str] = mapped_column(String(128))
    weight: Mapped[float] = mapped_column(Float)
    p_best: Mapped[float] = mapped_column(Float)
    units: Mapped[int] = mapped_column(BigInteger)
    computed_at: Mapped[datetime] = mapped_column(DateTime)


class BanditAssignment(Base):
    """A sticky bandit decision: the first arm drawn for a unit in a context."""

    __tablename__ = "bandit_assignments"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    context: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    arm: Mapped[str] = mapped_column(String(128))
    propensity: Mapped[float] = mapped_column(Float)
    weight_version: Mapped[int] = mapped_column(Integer)
    assigned_at: Mapped[datetime] = mapped_column(DateTime)
    # The unit's reward so far (0/1 for a binary reward): what it added to bandit_state.
    reward: Mapped[float] = mapped_column(Float, server_default=text("0"))


class BanditExposure(Base):
    """A per-request (non-sticky) bandit trial: the exposure's arm, context and reward so far."""

    __tablename__ = "bandit_exposures"

    # No foreign key to exposures: the row is written in the exposure's own transaction.
    exposure_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    context: Mapped[str] = mapped_column(String(64))
    arm: Mapped[str] = mapped_column(String(128))
    reward: Mapped[float] = mapped_column(Float, server_default=text("0"))


class RegisteredModel(Base):
    """A trained variant strategy, exported as an artifact: version, checksum, metrics, status.

    Read and written only by `abplatform.storage.model_registry`.
    """

    __tablename__ = "models"
    __table_args__ = (
        # Versions count per experiment and variant; two writers racing for the same
        # version meet here (the registry retries with the next one).
        UniqueConstraint("experiment", "variant", "version", name="uq_models_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment: Mapped[str] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # sha256 of the canonical JSON of {"kind", "params"}: equal configurations, equal hash.
    params_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    catalog: Mapped[str] = mapped_column(String(128))
    # The newest interaction of the history the exported fit used (None: empty history).
    history_cutoff: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    history_rows: Mapped[int] = mapped_column(BigInteger)
    artifact_path: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    status_changed_at: Mapped[datetime] = mapped_column(DateTime)
