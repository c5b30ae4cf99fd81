"""Only `abplatform.storage.rows` writes the exposures, impressions and events tables."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "abplatform" / "storage" / "rows.py"
SCANNED = ("abplatform", "strategies", "simulator", "reports", "bench")
# The schema (models) and its migrations declare the tables; they write no rows.
EXEMPT = {ROOT / "abplatform" / "storage" / "models.py"}
TABLES = r"(exposures|impressions|events)"
WRITES = (
    # Raw SQL: INSERT INTO / COPY, quoted or not.
    re.compile(rf"\b(INSERT\s+(OR\s+\w+\s+)?INTO|COPY)\s+\"?{TABLES}\b", re.IGNORECASE),
    # The set-based writers of `storage.bulk` given one of the tables by name.
    re.compile(rf"\b(bulk_insert|insert_rows)\(\s*[\w.]+,\s*[\"']{TABLES}[\"']"),
    # SQLAlchemy Core inserts and ORM objects of the three models.
    re.compile(r"\binsert\(\s*(m\.|models\.)?(Exposure|Impression|Event)\b"),
    re.compile(r"\b(Exposure|Impression|Event)\.__table__\.insert\("),
    re.compile(r"(?<![\w.])(m\.|models\.)?(Exposure|Impression|Event)\("),
)


def _writes(text: str) -> list[str]:
    return [match.group(0) for pattern in WRITES for match in pattern.finditer(text)]


def test_the_log_tables_have_one_writer() -> None:
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == OWNER or path in EXEMPT:
                continue
            found += [f"{path.relative_to(ROOT)}: {hit}" for hit in _writes(path.read_text())]
    assert found == [], "write these rows through abplatform.storage.rows:\n" + "\n".join(found)


def test_the_scan_recognises_writes() -> None:
    assert _writes(OWNER.read_text())  # the owner's own writes are seen
    samples = [
        'cursor.execute("INSERT INTO events (event_id) VALUES (?)")',
        "conn.execute(text('insert into \"exposures\" (id) values (1)'))",
        'bulk_insert(\n    conn,\n    "impressions",\n    {"exposure_id": ids},\n)',
        "conn.execute(insert(m.Event).values(rows))",
        "session.add(m.Exposure(id=1))",
        "cursor.copy('COPY \"exposures\" (id) FROM STDIN')",
    ]
    assert [bool(_writes(sample)) for sample in samples] == [True] * len(samples)
    assert not _writes("threading.Event(); EventRow(...); bulk_insert(conn, 'users', {})")
