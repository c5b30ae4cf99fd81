"""Settings of the API server, read from ABPLATFORM_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server settings; `abplatform serve` passes its options through the environment."""

    model_config = SettingsConfigDict(env_prefix="ABPLATFORM_", extra="ignore")

    database_url: str | None = None
    api_auth: bool = True
    api_max_body_bytes: int = 4 * 1024 * 1024
    api_writer_max_rows: int = 200_000
    api_writer_flush_rows: int = 20_000
    api_writer_flush_seconds: float = 0.005
    # Journal of accepted exposures (replayed after a crash). Default: next to a SQLite
    # file, else under $XDG_STATE_HOME/abplatform/journal/<hash of the URL>. "off": none.
    api_journal_dir: str | None = None
    api_status_ttl_seconds: float = 1.0
    # Serve concurrent single assignments of a strategy whose batches are much cheaper
    # (the two-tower top-k) with one batch call (see api/README.md, Coalescing).
    api_coalesce: bool = True
    api_key_cache_seconds: float = 60.0
    # Failed key verifications allowed per (key id, client) and per client within the
    # window; past them 429 + Retry-After, without a look-up or scrypt (api/verifier.py).
    api_key_failures_per_key: int = Field(default=5, ge=1)
    api_key_failures_per_client: int = Field(default=50, ge=1)
    api_key_failure_window_seconds: float = Field(default=60.0, gt=0.0)
    # Bound on each statement of an HTTP-triggered analysis (/results, /report): 503 after.
    api_analysis_timeout_seconds: float = Field(default=60.0, gt=0.0)
    # When the database is in trouble (api/README.md, "When the database is in trouble"):
    # a PostgreSQL connection attempt gives up after this (libpq counts whole seconds), and
    # a request waits at most this + 1 s on a database call before answering 503.
    api_db_connect_timeout_seconds: float = Field(default=3.0, gt=0.0)
    # A database connection is waited for at most this long from the pool (then 503).
    api_db_pool_timeout_seconds: float = Field(default=5.0, gt=0.0)
    # While the database is unreachable, a cached running experiment keeps assigning from
    # the state last read this many seconds ago at most; older state answers 503.
    api_outage_serve_seconds: float = Field(default=300.0, ge=0.0)
    # Lock waits of the API's writes (api/README.md, Writes): each lock a writer transaction
    # waits for, at most this long (PostgreSQL lock_timeout, SQLite busy timeout) ...
    api_lock_wait_seconds: float = Field(default=3.0, gt=0.0)
    # ... and a /v1/events request waits at most this long for its commit, then 503.
    api_events_wait_seconds: float = Field(default=5.0, gt=0.0)
    # Results cache (/results, /report): an analysis younger than this is served without a
    # statement; an older one is served at once while one background task recomputes it.
    api_results_ttl_seconds: float = Field(default=30.0, ge=0.0)
    # How many experiments' analyses each server process keeps (least recently computed
    # dropped first).
    api_results_cache_experiments: int = Field(default=64, ge=1)
    # Online features (README, "Real-time features"): interactions kept per unit in the
    # feature store, newest first.
    api_feature_recent_items: int = Field(default=50, ge=1, le=1000)
    # Slate cache: slates kept per process (0: no cache), each for at most this many seconds;
    # an entry is served only for the unit's current feature version.
    api_slate_cache_size: int = Field(default=100_000, ge=0)
    api_slate_cache_ttl_seconds: float = Field(default=60.0, gt=0.0)
    # FastAPI's native OpenTelemetry instrumentation (when a provider is configured).
    api_telemetry: bool = False
