"""Exposure ids reserved by a server process are never handed out again by simulate or ingest."""

from __future__ import annotations

from abplatform.storage.bulk import reserve_ids
from abplatform.storage.db import make_engine, upgrade
from abplatform.storage.exposure_ids import ExposureIds


def test_reserved_block_is_skipped_by_bulk_reservation(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    try:
        server = ExposureIds(engine, block=16)
        taken = server.take(5)  # reserved, not yet written: MAX(id) is still 0
        with engine.begin() as conn:
            bulk = reserve_ids(conn, "exposures", 3).tolist()
        assert not set(taken) & set(bulk)
        assert min(bulk) > max(taken)
        # And the server's next block starts above what the bulk writer reserved.
        later = ExposureIds(engine, block=16).take(1)
        assert later[0] > max(bulk)
    finally:
        engine.dispose()
