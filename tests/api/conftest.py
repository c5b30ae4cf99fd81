"""Fixtures of the API tests: a seeded database, API keys, an httpx client over the ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from abplatform.api.app import create_app
from abplatform.api.settings import Settings
from abplatform.config.loader import load_experiment
from abplatform.config.models import ExperimentConfig, SimulationConfig
from abplatform.keys import create_key
from abplatform.storage.db import open_database, transaction
from simulator.runner import simulate, simulation_catalog
from strategies.training import train_experiment

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "homepage_popularity.yaml"
KEY = "homepage_popularity"


def small_config() -> ExperimentConfig:
    """The example experiment with a tiny simulated world (fast to seed)."""
    config = load_experiment(EXAMPLE)
    sim = SimulationConfig(users=300, days=1, items=200, slate_size=5, seed=7)
    return config.model_copy(update={"simulation": sim})


@dataclass(frozen=True)
class Keys:
    """One key per scope plus one with every scope."""

    assign: str
    read: str
    admin: str
    every: str

    def header(self, which: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, which)}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def seeded_url(db_url: str) -> str:
    """A database holding the small simulated experiment (status draft)."""
    engine = open_database(db_url)
    simulate(engine, small_config())
    engine.dispose()
    return db_url


@pytest.fixture
def keys(seeded_url: str) -> Keys:
    engine = open_database(seeded_url)
    with transaction(engine) as session:
        made = {
            name: create_key(session, f"test-{name}", scopes).plain
            for name, scopes in (
                ("assign", ["assign"]),
                ("read", ["read"]),
                ("admin", ["admin"]),
                ("every", ["assign", "read", "admin"]),
            )
        }
    engine.dispose()
    return Keys(**made)


@pytest.fixture
def app(seeded_url: str, tmp_path: Path) -> FastAPI:
    settings = Settings(
        database_url=seeded_url,
        api_auth=True,
        api_status_ttl_seconds=0.05,
        api_journal_dir=str(tmp_path / "journal"),
    )
    return create_app(settings)


@asynccontextmanager
async def _http(app: FastAPI, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers=keys.header("every"),
        ) as http,
    ):
        yield http


@pytest.fixture
async def client(app: FastAPI, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    """httpx over the ASGI app with its lifespan running; authorised with every scope."""
    async with _http(app, keys) as http:
        yield http


@pytest.fixture(params=["fast lane", "routes"])
async def both_lanes(
    request: pytest.FixtureRequest, app: FastAPI, keys: Keys
) -> AsyncIterator[httpx.AsyncClient]:
    """As `client`, once with the fast lane and once over the FastAPI routes alone."""
    from abplatform.api.fastlane import FastLane

    if request.param == "routes":
        kept = [mw for mw in app.user_middleware if getattr(mw, "cls", None) is not FastLane]
        app.user_middleware = kept
    async with _http(app, keys) as http:
        yield http


@pytest.fixture
def trained(seeded_url: str, tmp_path: Path) -> dict[str, int]:
    """The seeded experiment's two popularity variants, trained and registered: id by variant."""
    config = small_config()
    engine = open_database(seeded_url)
    report = train_experiment(
        engine, config, simulation_catalog(config), artifacts_dir=tmp_path / "artifacts"
    )
    engine.dispose()
    return {r.name: r.model_id for r in report.results if r.model_id is not None}
