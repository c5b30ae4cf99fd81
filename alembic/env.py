"""Alembic environment: runs migrations on the engine abplatform hands over."""

from __future__ import annotations

from sqlalchemy import Engine

from abplatform.storage.db import make_engine
from abplatform.storage.models import Base
from alembic import context

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Run migrations with a live connection."""
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:
        engine = make_engine(config.get_main_option("sqlalchemy.url") or None)
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; use: abplatform db upgrade")
run_migrations_online()
