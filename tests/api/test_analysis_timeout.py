"""HTTP-triggered analysis is bounded: over `api_analysis_timeout_seconds` it answers 503."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from abplatform.api.app import create_app
from abplatform.api.settings import Settings
from abplatform.storage.db import open_database, with_statement_timeout
from reports.analysis import analyze
from tests.api.conftest import KEY

pytestmark = pytest.mark.anyio


@pytest.fixture
def app(seeded_url: str, tmp_path: Path) -> FastAPI:
    """The server with a 1 ms analysis bound (overrides conftest's `app` for `client`)."""
    settings = Settings(
        database_url=seeded_url,
        api_journal_dir=str(tmp_path / "journal"),
        api_analysis_timeout_seconds=0.001,
    )
    return create_app(settings)


async def test_results_and_report_over_the_bound_answer_503(client: httpx.AsyncClient) -> None:
    """A 1 ms bound cancels the analysis; the server's connections stay unbounded after."""
    for route in ("results", "report"):
        answer = await client.get(f"/v1/experiments/{KEY}/{route}")
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"].startswith("application/json")
        detail = answer.json()["detail"]
        assert f"analysis of {KEY!r}" in detail
        assert "api_analysis_timeout_seconds=0.001" in detail
    # The bound is the analysis's own: the pooled connections serve the rest as before.
    for _ in range(3):
        listed = await client.get(f"/v1/experiments/{KEY}")
        assert listed.status_code == 200, listed.text


def test_a_generous_bound_changes_no_result(seeded_url: str) -> None:
    engine = open_database(seeded_url)
    bounded = with_statement_timeout(engine, 60.0)
    assert analyze(bounded, KEY).to_dict() == analyze(engine, KEY).to_dict()
    engine.dispose()


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="api_analysis_timeout_seconds"):
        Settings(api_analysis_timeout_seconds=0)
