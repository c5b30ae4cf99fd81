"""One module writes the catalogue tables, one the simulation runs (inserts, updates, deletes)."""

from __future__ import annotations

import re

from tests.storage.table_writes import ROOT, SCANNED, TableWrites

CATALOG_OWNER = ROOT / "abplatform" / "storage" / "catalog.py"
RUNS_OWNER = ROOT / "abplatform" / "storage" / "repository.py"
CATALOG_TABLES = TableWrites(
    ("catalog_items", "users", "interactions"), ("CatalogItem", "User", "Interaction")
)
RUNS = TableWrites(("simulation_runs",), ("SimulationRun",))
# A caller holding a run's ORM row could change it: only the repository loads one.
RUN_MODEL = re.compile(r"\bSimulationRun\b")


def test_the_catalogue_tables_have_one_writer() -> None:
    found = CATALOG_TABLES.outside([CATALOG_OWNER])
    assert found == [], "write these rows through abplatform.storage.catalog:\n" + "\n".join(found)


def test_simulation_runs_have_one_writer() -> None:
    found = RUNS.outside([RUNS_OWNER])
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in (RUNS_OWNER, ROOT / "abplatform" / "storage" / "models.py"):
                continue
            hits = RUN_MODEL.findall(path.read_text(encoding="utf-8"))
            found += [f"{path.relative_to(ROOT)}: {hit}" for hit in hits]
    assert found == [], "write runs through abplatform.storage.repository:\n" + "\n".join(found)


def test_the_scan_recognises_catalogue_writes() -> None:
    owner = CATALOG_OWNER.read_text()
    seen = CATALOG_TABLES.find(owner)  # the owner's inserts, updates and deletes
    for statement in ('bulk_insert(conn, "catalog_items"', "ITEMS.update(", "USERS.update("):
        assert statement in seen
    for table in ("INTERACTIONS", "USERS", "ITEMS"):
        assert f"{table}.delete(" in seen
    samples = [
        'bulk_insert(\n    conn,\n    "catalog_items",\n    {"item_id": ids},\n)',
        'insert_rows(conn, "users", names, rows)',
        "cursor.copy('COPY \"interactions\" (user_id) FROM STDIN')",
        'conn.execute(text("INSERT INTO users (user_id) VALUES (:u)"))',
        "conn.execute(update(m.CatalogItem).where(m.CatalogItem.id == 1).values(price=2))",
        "conn.execute(text('UPDATE \"users\" SET features = :f'))",
        "session.execute(delete(m.Interaction).where(m.Interaction.catalog == c))",
        'conn.execute(text("DELETE FROM catalog_items WHERE catalog = :c"))',
        "conn.execute(m.User.__table__.update().values(features={}))",
        "t = m.Interaction.__table__\nconn.execute(t.delete())",
        "session.add(m.User(user_id='u1'))",
    ]
    assert [bool(CATALOG_TABLES.find(sample)) for sample in samples] == [True] * len(samples)
    reads = [
        "t = m.Interaction.__table__\nconn.execute(select(t.c.ts))",
        "InteractionLog(catalog=c); bulk_insert(conn, 'events', {})",
        "# users are updated by the owner",
    ]
    assert [CATALOG_TABLES.find(sample) for sample in reads] == [[]] * len(reads)


def test_the_scan_recognises_run_writes() -> None:
    owner = RUNS_OWNER.read_text()
    assert "m.SimulationRun(" in RUNS.find(owner)  # start_run
    assert "delete(m.SimulationRun" in RUNS.find(owner)  # clear_experiment_data
    samples = [
        "session.add(m.SimulationRun(seed=1))",
        "conn.execute(update(m.SimulationRun).values(status='completed'))",
        'conn.execute(text("DELETE FROM simulation_runs WHERE id = 1"))',
    ]
    assert [bool(RUNS.find(sample)) for sample in samples] == [True] * len(samples)
    assert RUN_MODEL.search("run = session.get(m.SimulationRun, run_id)")
