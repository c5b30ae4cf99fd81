"""CUPED with a configured pre-period window uses ingested events from before exposure."""

from __future__ import annotations

from pathlib import Path

import pytest

from abplatform.config import ConfigError, load_experiment_text
from abplatform.ingest import ingest_logs
from abplatform.storage.db import open_database
from reports.analysis import analyze

CONFIG = """
key: pre
variants: [{{key: a, weight: 0.5}}, {{key: b, weight: 0.5}}]
metrics: [{{name: clicks, type: mean, event: click}}]
analysis: {{cuped: true{window}}}
"""
WINDOW = ", pre_period: {start: '2024-04-01T00:00:00Z', end: '2024-05-01T00:00:00Z'}"


def write_logs(tmp_path: Path) -> tuple[Path, Path]:
    # 60 units exposed on 2024-05-01. Unit i clicks (i % 7) times in April (before its
    # exposure), then (i % 7) + (i % 2) times after it: the pre-period count predicts the
    # outcome almost perfectly, so CUPED removes most of the variance.
    exposures = ["unit_id,variant,timestamp"]
    events = ["unit_id,type,timestamp,event_id"]
    for i in range(60):
        unit = f"u{i}"
        exposures.append(f"{unit},{'a' if i < 30 else 'b'},2024-05-01T00:00:00Z")
        for j in range(i % 7):
            events.append(f"{unit},click,2024-04-{10 + j:02d}T12:00:00Z,pre-{i}-{j}")
        for j in range(i % 7 + i % 2):
            events.append(f"{unit},click,2024-05-{2 + j:02d}T12:00:00Z,post-{i}-{j}")
    exposure_file, event_file = tmp_path / "exposures.csv", tmp_path / "events.csv"
    exposure_file.write_text("\n".join(exposures) + "\n")
    event_file.write_text("\n".join(events) + "\n")
    return exposure_file, event_file


def test_pre_period_events_feed_cuped(db_url: str, tmp_path: Path) -> None:
    engine = open_database(db_url)
    exposures, events = write_logs(tmp_path)
    ingest_logs(engine, load_experiment_text(CONFIG.format(window="")), exposures, events)
    without = analyze(engine, "pre").to_dict()["metrics"][0]
    # Without a window there is no history for these units: CUPED has nothing to use.
    assert not without["cuped"]["applied"]
    ingest_logs(engine, load_experiment_text(CONFIG.format(window=WINDOW)), None, None)
    with_window = analyze(engine, "pre").to_dict()["metrics"][0]
    assert with_window["cuped"]["applied"]
    assert with_window["cuped"]["variance_reduction"] > 0.8
    # Post-exposure clicks are what is measured, with or without the adjustment.
    assert [v["mean"] for v in with_window["variants"]] == pytest.approx(
        [v["mean"] for v in without["variants"]], rel=0.5
    )
    engine.dispose()


def test_pre_period_must_be_ordered() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment_text(
            CONFIG.format(window=", pre_period: {start: '2024-05-01', end: '2024-04-01'}")
        )
    assert info.value.problems == [
        "analysis.pre_period: pre_period.start must be before pre_period.end "
        "(got {end: '2024-04-01', start: '2024-05-01'})"
    ]
