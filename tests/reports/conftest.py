"""Fixtures shared by the analysis and report tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from sqlalchemy import Engine

from abplatform.storage.db import open_database
from tests.browser import start_chromium


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the test's database (SQLite file or PostgreSQL), schema at head."""
    eng = open_database(db_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium (Debian's package); the test fails, never skips, without it."""
    yield from start_chromium()
