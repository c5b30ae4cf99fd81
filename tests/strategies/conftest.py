"""Fixtures of the strategy tests: a small history every strategy can fit on."""

from __future__ import annotations

import pytest

from abplatform.domain import InteractionLog
from tests.factories import make_history


@pytest.fixture
def history() -> InteractionLog:
    return make_history()
