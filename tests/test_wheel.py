"""A built wheel is complete: installed into a fresh virtual environment outside the checkout,
it migrates a database, simulates a bundled example, analyses it and writes its HTML report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "ABPLATFORM_DATABASE_URL", "VIRTUAL_ENV")
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_migrates_simulates_and_analyzes(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # sdist first, then the wheel from the unpacked sdist: no stale build/ folder can leak in
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=ROOT)
    (wheel,) = dist.glob("abplatform-*.whl")

    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, cli = str(env_dir / "bin" / "python"), str(env_dir / "bin" / "abplatform")
    _run([python, "-m", "pip", "install", "--quiet", str(wheel)], cwd=tmp_path)

    work = tmp_path / "elsewhere"  # nothing of the checkout is reachable from here
    work.mkdir()
    where = _run([python, "-c", "import abplatform; print(abplatform.__file__)"], cwd=work)
    assert where.strip().startswith(str(env_dir)), where

    db = f"sqlite:///{work / 'shop.db'}"
    assert "at revision" in _run([cli, "db", "upgrade", "--db", db], cwd=work)
    listed = dict(
        line.split("\t") for line in _run([cli, "examples"], cwd=work).strip().splitlines()
    )
    example = Path(listed["homepage_popularity"])
    assert example.is_file() and str(example).startswith(str(env_dir)), listed
    _run([cli, "simulate", str(example), "--users", "300", "--db", db], cwd=work)
    result = json.loads(_run([cli, "analyze", "homepage_popularity", "--json", "--db", db], work))
    assert result["experiment"] == "homepage_popularity"
    assert sum(result["units"].values()) > 200
    report = work / "report.html"
    _run([cli, "report", "homepage_popularity", "-o", str(report), "--db", db], cwd=work)
    assert "homepage_popularity" in report.read_text(encoding="utf-8")
