"""Only `abplatform.storage.repository` writes the experiments table (and so signals changes)."""

from __future__ import annotations

from tests.storage.table_writes import ROOT, TableWrites

OWNER = ROOT / "abplatform" / "storage" / "repository.py"
EXPERIMENTS = TableWrites(("experiments",), ("Experiment",))


def test_the_experiments_table_has_one_writer() -> None:
    """A write elsewhere would change what API workers serve without telling them."""
    found = EXPERIMENTS.outside([OWNER])
    assert found == [], "write experiments through abplatform.storage.repository:\n" + "\n".join(
        found
    )


def test_the_scan_recognises_experiment_writes() -> None:
    assert EXPERIMENTS.find(OWNER.read_text())  # the owner's insert is seen
    samples = [
        'conn.execute(update(m.Experiment).values(status="running"))',
        "conn.execute(text(\"UPDATE experiments SET status = 'running'\"))",
    ]
    assert [bool(EXPERIMENTS.find(sample)) for sample in samples] == [True, True]
