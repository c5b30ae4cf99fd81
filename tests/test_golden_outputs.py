"""Refactoring guard: `simulate` + `analyze --json` of every example give byte-identical output.

The golden files under `tests/data/golden/` were written by this module before the code was
restructured; a change of behaviour (a number, a key, a line of the simulate summary) fails
here. When a change of output is intended, regenerate them with
`ABPLATFORM_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_outputs.py` and
review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from abplatform.cli import app

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))
USERS = "1500"  # small enough for the suite, large enough that every section is filled
REGENERATE = os.environ.get("ABPLATFORM_REGENERATE_GOLDEN") == "1"


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
        assert text == path.read_text(encoding="utf-8"), f"{example} on {engine_name}: {suffix}"


def test_every_example_has_golden_files() -> None:
    missing = [
        f"{example}.{engine}.{suffix}"
        for example in EXAMPLES
        for engine in ("sqlite", "postgres")
        for suffix in ("simulate.txt", "analyze.json")
        if not (GOLDEN / f"{example}.{engine}.{suffix}").exists()
    ]
    assert not missing
