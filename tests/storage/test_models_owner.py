"""`abplatform.storage.model_registry` is the only reader and writer of the `models` table."""

from __future__ import annotations

import re
from pathlib import Path

from tests.storage.table_writes import TableWrites

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("abplatform", "simulator", "reports", "strategies", "bench")
OWNER = Path("abplatform/storage/model_registry.py")
ALLOWED = {Path("abplatform/storage/models.py")}  # the schema: the table definition
MODELS = TableWrites(("models",), ("RegisteredModel",))
# The ORM model by name, or the table in SQL text or a metadata look-up. ("models" alone is
# also the name of `abplatform.storage.models`, so only SQL and look-up shapes count.)
TABLE_REFERENCE = re.compile(
    r"\bRegisteredModel\b"
    r"|\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+\"?models\b"
    r"|tables\[[\"']models[\"']\]",
    re.IGNORECASE,
)


def _references() -> list[str]:
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative == OWNER or relative in ALLOWED:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if TABLE_REFERENCE.search(line):
                    found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_the_models_table_is_used_only_by_the_registry() -> None:
    found = _references()
    assert found == [], "use abplatform.storage.model_registry:\n" + "\n".join(found)
    assert MODELS.outside([ROOT / OWNER]) == []


def test_the_scan_finds_a_reference() -> None:
    for sample in (
        "session.get(m.RegisteredModel, 3)",
        'conn.execute(text("SELECT id FROM models WHERE status = :s"))',
        "conn.execute(text('UPDATE \"models\" SET status = :s'))",
        "metadata.tables['models'].c.status",
    ):
        assert TABLE_REFERENCE.search(sample), sample
    for sample in (
        "from abplatform.storage import models as m",
        "from abplatform.storage.model_registry import list_models",
        "# models are registered by train",
    ):
        assert not TABLE_REFERENCE.search(sample), sample
    owner = (ROOT / OWNER).read_text(encoding="utf-8")
    assert "m.RegisteredModel(" in MODELS.find(owner)  # register's insert
    assert "update(m.RegisteredModel" in MODELS.find(owner)
