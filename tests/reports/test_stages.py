"""Stage timing hooks of `analyze`: recorded when asked, and the result is the same."""

from __future__ import annotations

from abplatform.storage.db import open_database
from reports.analysis import analyze
from reports.stages import recording, stage
from simulator.runner import simulate
from tests.api.conftest import KEY, small_config


def test_recording_times_each_stage_and_changes_no_result(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    simulate(engine, small_config())
    plain = analyze(engine, KEY).to_dict()
    with recording() as seconds:
        timed = analyze(engine, KEY).to_dict()
    engine.dispose()
    assert timed == plain
    assert {"aggregate SQL", "statistics", "ranking quality", "ground truth"} <= set(seconds)
    assert all(value >= 0.0 for value in seconds.values())


def test_a_stage_outside_recording_records_nothing() -> None:
    with stage("anything"):
        pass
    with recording() as seconds:
        with stage("twice"):
            pass
        with stage("twice"):
            pass
    assert list(seconds) == ["twice"]
