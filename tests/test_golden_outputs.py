"""Refactoring guard: `simulate` + `analyze --json` of every example give byte-identical output.

The golden files under `tests/data/golden/` were written by this module before the code was
restructured; a change of behaviour (a number, a key, a line of the simulate summary) fails
here. When a change of output is intended, regenerate them with
`ABPLATFORM_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_outputs.py` and
review the diff like code.

SQLite's output is compared byte for byte. PostgreSQL's analysis JSON is compared key for key
and string for string, and every number at a relative tolerance of 1e-12: the server's plan
(chosen from planner statistics that `analyze` refreshes) may add the same per-unit values
in another order, which moves the last one or two of a double's 16 digits (measured: at
most 7e-14). A real change of a number is many orders larger.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from abplatform.cli import app

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))
USERS = "1500"  # small enough for the suite, large enough that every section is filled
REGENERATE = os.environ.get("ABPLATFORM_REGENERATE_GOLDEN") == "1"
SUMMATION_RTOL = 1e-12


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES)
def test_simulate_and_analyze_match_golden(example: str, db_url: str) -> None:
    engine_name = "postgres" if db_url.startswith("postgresql") else "sqlite"
    summary = _invoke(
        "simulate", str(ROOT / "examples" / f"{example}.yaml"), "--users", USERS, "--db", db_url
    )
    analysis = _invoke("analyze", example, "--json", "--db", db_url)
    outputs = {"simulate.txt": summary, "analyze.json": analysis}
    for suffix, text in outputs.items():
        path = GOLDEN / f"{example}.{engine_name}.{suffix}"
        if REGENERATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        assert path.exists(), f"no golden file {path}; see this module's docstring"
        golden = path.read_text(encoding="utf-8")
        where = f"{example} on {engine_name}: {suffix}"
        if engine_name == "postgres" and suffix == "analyze.json":
            _assert_same_document(json.loads(text), json.loads(golden), where)
        else:
            assert text == golden, where


def _assert_same_document(got: Any, want: Any, where: str) -> None:
    """Equal JSON documents, numbers within `SUMMATION_RTOL` (same keys, order and types)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            _assert_same_document(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same_document(a, b, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, float | int), where
        assert math.isclose(got, want, rel_tol=SUMMATION_RTOL, abs_tol=0.0), (where, got, want)
    else:
        assert got == want and type(got) is type(want), (where, got, want)


def test_the_document_comparison_can_fail() -> None:
    want = {"a": [1, 0.1234567890123456, "x"], "b": None}
    _assert_same_document({"a": [1, 0.1234567890123457, "x"], "b": None}, want, "ok")
    for wrong in (
        {"a": [1, 0.12345678901, "x"], "b": None},
        {"a": [1, 0.1234567890123456, "y"], "b": None},
        {"b": None, "a": [1, 0.1234567890123456, "x"]},
        {"a": [1, 0.1234567890123456], "b": None},
        {"a": [1.0, 0.1234567890123456, "x"], "b": None},
    ):
        with pytest.raises(AssertionError):
            _assert_same_document(wrong, want, "wrong")


def test_every_example_has_golden_files() -> None:
    missing = [
        f"{example}.{engine}.{suffix}"
        for example in EXAMPLES
        for engine in ("sqlite", "postgres")
        for suffix in ("simulate.txt", "analyze.json")
        if not (GOLDEN / f"{example}.{engine}.{suffix}").exists()
    ]
    assert not missing
