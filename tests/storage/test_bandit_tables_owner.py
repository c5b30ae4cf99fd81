"""The bandit package is the only reader and writer of the ``bandit_*`` tables."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("abplatform", "simulator", "reports", "strategies", "bench")
OWNER = Path("abplatform/bandit")
ALLOWED = {
    Path("abplatform/storage/models.py"),  # the schema: table definitions
}
# A table by name (SQL text, metadata lookups) or by its ORM model.
TABLE_REFERENCE = re.compile(
    r"\bbandit_(state|weights|assignments|exposures)\b"
    r"|\bBandit(State|Weight|Assignment|Exposure)\b"
)


def _references() -> dict[Path, list[str]]:
    found: dict[Path, list[str]] = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.is_relative_to(OWNER) or relative in ALLOWED:
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            hits = [
                f"{relative}:{number}: {line.strip()}"
                for number, line in enumerate(lines, start=1)
                if TABLE_REFERENCE.search(line)
            ]
            if hits:
                found[relative] = hits
    return found


def test_bandit_tables_are_used_only_by_the_bandit_package() -> None:
    outside = _references()
    assert not outside, "bandit_* tables used outside abplatform/bandit/:\n" + "\n".join(
        hit for hits in outside.values() for hit in hits
    )


def test_the_scan_finds_a_table_reference() -> None:
    assert TABLE_REFERENCE.search('conn.execute(text("SELECT units FROM bandit_state"))')
    assert TABLE_REFERENCE.search("delete(m.BanditWeight)")
    assert not TABLE_REFERENCE.search("from abplatform.bandit import BanditStore")
