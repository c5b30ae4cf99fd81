"""API keys: creation, salted hashing (scrypt) and verification with scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from abplatform.errors import AbplatformError
from abplatform.storage import models as m
from abplatform.storage.repository import utcnow

SCOPES: tuple[str, ...] = ("assign", "read", "admin")
"""`assign`: assign + events; `read`: experiments, results, report; `admin`: create/start/stop."""

PREFIX = "abp"
KEY_ID_BYTES = 8
SECRET_BYTES = 24
# scrypt cost: ~20 ms per check; verified keys are cached in memory, so this is paid once.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: the plain text is shown once and never stored."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    plain: str


@dataclass(frozen=True)
class KeyIdentity:
    """Who a verified key belongs to and what it may do."""

    key_id: str
    name: str
    scopes: frozenset[str]


def hash_secret(secret: str, salt: bytes) -> str:
    """The scrypt hash of a key's secret under its own salt, hex encoded."""
    digest = hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return digest.hex()


def split_key(plain: str) -> tuple[str, str] | None:
    """`abp_<key id>_<secret>` -> (key id, secret), or None when it is not of that form."""
    parts = plain.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def create_key(session: Session, name: str, scopes: list[str]) -> NewKey:
    """Store a new key (only its salted hash) and return the plain text once."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise AbplatformError(
            f"unknown scope {', '.join(map(repr, unknown))}" if unknown else "no scope given",
            hint=f"pass --scope one or more times; known scopes: {', '.join(SCOPES)}",
        )
    if not name or len(name) > 128:
        raise AbplatformError("a key name needs 1 to 128 characters", hint="pass --name NAME")
    chosen = tuple(dict.fromkeys(scopes))
    key_id = secrets.token_hex(KEY_ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    salt = secrets.token_bytes(16)
    session.add(
        m.ApiKey(
            key_id=key_id,
            name=name,
            scopes=" ".join(chosen),
            salt=salt.hex(),
            secret_hash=hash_secret(secret, salt),
            created_at=utcnow(),
        )
    )
    session.flush()
    return NewKey(key_id, name, chosen, f"{PREFIX}_{key_id}_{secret}")


def verify_key(session: Session, plain: str) -> KeyIdentity | None:
    """The identity of a valid, unrevoked key, or None (unknown id, wrong secret, revoked)."""
    parts = split_key(plain)
    if parts is None:
        return None
    key_id, secret = parts
    row = session.scalars(select(m.ApiKey).where(m.ApiKey.key_id == key_id)).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    expected = row.secret_hash
    if not hmac.compare_digest(hash_secret(secret, bytes.fromhex(row.salt)), expected):
        return None
    return KeyIdentity(row.key_id, row.name, frozenset(row.scopes.split()))


def list_keys(session: Session) -> list[m.ApiKey]:
    """All keys, oldest first (hashes included; never print them)."""
    return list(session.scalars(select(m.ApiKey).order_by(m.ApiKey.id)).all())


def revoke_key(session: Session, key_id: str) -> bool:
    """Mark a key revoked; False when there is no such key."""
    row = session.scalars(select(m.ApiKey).where(m.ApiKey.key_id == key_id)).one_or_none()
    if row is None:
        return False
    row.revoked_at = utcnow()
    return True
