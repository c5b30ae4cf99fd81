"""API keys: `abplatform keys create` prints a key once; only a salted hash is stored."""

from __future__ import annotations

import re

from sqlalchemy import select

from abplatform.keys import create_key, hash_secret, split_key, verify_key
from abplatform.storage import models as m
from abplatform.storage.db import open_database, transaction
from tests.factories import cli


def test_keys_create_prints_the_key_once_and_stores_a_salted_hash(sqlite_url: str) -> None:
    out = cli(
        "keys",
        "create",
        "--scope",
        "assign",
        "--scope",
        "read",
        "--name",
        "web",
        "--db",
        sqlite_url,
    )
    assert out.returncode == 0, out.stderr
    plain = out.stdout.strip()
    assert re.fullmatch(r"abp_[0-9a-f]{16}_[A-Za-z0-9_-]{32}", plain)
    assert "cannot be shown again" in out.stderr
    parts = split_key(plain)
    assert parts is not None
    key_id, secret = parts
    engine = open_database(sqlite_url)
    with transaction(engine) as session:
        row = session.scalars(select(m.ApiKey)).one()
        assert (row.key_id, row.name, row.scopes) == (key_id, "web", "assign read")
        assert secret not in (row.secret_hash, row.salt)
        assert row.secret_hash == hash_secret(secret, bytes.fromhex(row.salt))
        other = create_key(session, "other", ["assign"])
        other_row = session.scalars(select(m.ApiKey).where(m.ApiKey.key_id == other.key_id)).one()
        assert other_row.salt != row.salt  # a salt per key
        identity = verify_key(session, plain)
        assert identity is not None and identity.scopes == {"assign", "read"}
        assert verify_key(session, plain[:-1] + ("x" if plain[-1] != "x" else "y")) is None
        assert verify_key(session, "not-a-key") is None
    listed = cli("keys", "list", "--db", sqlite_url)
    assert key_id in listed.stdout and secret not in listed.stdout
    assert cli("keys", "revoke", key_id, "--db", sqlite_url).returncode == 0
    with transaction(engine) as session:
        assert verify_key(session, plain) is None
    engine.dispose()


def test_keys_create_rejects_an_unknown_scope(sqlite_url: str) -> None:
    out = cli("keys", "create", "--scope", "write", "--name", "web", "--db", sqlite_url)
    assert out.returncode == 2
    assert "unknown scope 'write'" in out.stderr
    assert "assign, read, admin" in out.stderr
    assert "Traceback" not in out.stderr
