"""Settings of the API server, read from ABPLATFORM_* environment variables."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server settings; `abplatform serve` passes its options through the environment."""

    model_config = SettingsConfigDict(env_prefix="ABPLATFORM_", extra="ignore")

    database_url: str | None = None
    api_auth: bool = True
    api_max_body_bytes: int = 4 * 1024 * 1024
    api_writer_max_rows: int = 200_000
    api_writer_flush_rows: int = 20_000
    api_status_ttl_seconds: float = 1.0
    api_key_cache_seconds: float = 60.0
