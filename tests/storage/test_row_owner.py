"""Only `abplatform.storage.rows` inserts, updates or deletes exposures, impressions and events."""

from __future__ import annotations

from tests.storage.table_writes import ROOT, TableWrites

OWNER = ROOT / "abplatform" / "storage" / "rows.py"
LOG_TABLES = TableWrites(
    ("exposures", "impressions", "events"), ("Exposure", "Impression", "Event")
)


def test_the_log_tables_have_one_writer() -> None:
    found = LOG_TABLES.outside([OWNER])
    assert found == [], "write these rows through abplatform.storage.rows:\n" + "\n".join(found)


def test_the_scan_recognises_writes() -> None:
    owner = OWNER.read_text()
    assert LOG_TABLES.find(owner)  # the owner's own writes are seen
    assert "EXPOSURES.delete(" in LOG_TABLES.find(owner)  # and its deletes
    samples = [
        'cursor.execute("INSERT INTO events (event_id) VALUES (?)")',
        "conn.execute(text('insert into \"exposures\" (id) values (1)'))",
        'bulk_insert(\n    conn,\n    "impressions",\n    {"exposure_id": ids},\n)',
        "conn.execute(insert(m.Event).values(rows))",
        "session.add(m.Exposure(id=1))",
        "cursor.copy('COPY \"exposures\" (id) FROM STDIN')",
        'conn.execute(text("DELETE FROM impressions WHERE exposure_id = 1"))',
        "session.execute(delete(m.Exposure).where(m.Exposure.experiment_id == 1))",
        "conn.execute(m.Event.__table__.delete())",
        'conn.execute(m.Base.metadata.tables["events"].delete())',
        "t = m.Impression.__table__\nconn.execute(t.delete().where(t.c.position > 3))",
        'EVENTS: Table = m.Base.metadata.tables["events"]\nconn.execute(update(EVENTS))',
        "conn.execute(text('UPDATE exposures SET variant = :v'))",
        "conn.execute(update(m.Exposure).values(variant='b'))",
    ]
    assert [bool(LOG_TABLES.find(sample)) for sample in samples] == [True] * len(samples)
    reads = [
        "threading.Event(); EventRow(...); bulk_insert(conn, 'users', {})",
        "_EXPOSURES = m.Exposure.__table__\nselect(_EXPOSURES.c.id)",
        "# update events of a unit, delete from the queue",
    ]
    assert [LOG_TABLES.find(sample) for sample in reads] == [[]] * len(reads)
