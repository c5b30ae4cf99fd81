"""Model artifact directories on disk: checksums and the check made before one is loaded.

An artifact is a directory of files (a two-tower export, a snapshot of a cheap strategy).
Its one digest, `artifact_sha256`, is the sha256 of the sorted ``"<relative path>
<sha256>"`` lines of every file in it, so any changed, added or removed file changes it.
This module needs neither TensorFlow nor the strategy plug-ins.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from abplatform.errors import AbplatformError

_BLOCK = 1 << 20
LIBRARIES = ("numpy", "tensorflow", "tf-keras", "tensorflow-recommenders", "abplatform")
"""Packages whose versions a manifest records (looked up, never imported)."""
ARTIFACTS_ENV = "ABPLATFORM_ARTIFACTS"
DEFAULT_ARTIFACTS = "artifacts"


def default_artifacts_dir() -> Path:
    """Where `simulate` and `train` write artifacts by default: $ABPLATFORM_ARTIFACTS, else
    ``artifacts`` (relative to the working directory)."""
    return Path(os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)


class ArtifactError(AbplatformError):
    """An artifact directory that is missing, incomplete, corrupted or of another format."""


class ArtifactMismatch(ArtifactError):
    """An artifact whose files do not match the checksum recorded for it."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(
            f"artifact {path} does not match its recorded checksum: expected sha256 "
            f"{expected}, found {actual}",
            hint="the files were changed or replaced after registration; train again "
            "(abplatform train FILE) or restore the original files",
        )
        self.path = path
        self.expected = expected
        self.actual = actual


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of one file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_files(directory: str | Path) -> list[Path]:
    """Every regular file under `directory`, by relative path (POSIX order)."""
    root = Path(directory)
    if not root.is_dir():
        raise ArtifactError(
            f"artifact directory {root} does not exist",
            hint="the artifacts were moved or deleted; train again (abplatform train FILE)",
        )
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.as_posix())


def artifact_sha256(directory: str | Path) -> str:
    """One digest over an artifact directory: sha256 of its sorted "path sha256" lines."""
    root = Path(directory)
    lines = [f"{p.relative_to(root).as_posix()} {file_sha256(p)}\n" for p in artifact_files(root)]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def verify_artifact(directory: str | Path, expected_sha256: str) -> Path:
    """The artifact directory, resolved, after checking its digest; `ArtifactMismatch` if not."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ArtifactError(
            f"artifact directory {root} does not exist (expected sha256 {expected_sha256})",
            hint="the artifacts were moved or deleted; restore them or train again "
            "(abplatform train FILE)",
        )
    actual = artifact_sha256(root)
    if actual != expected_sha256:
        raise ArtifactMismatch(root, expected_sha256, actual)
    return root


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Python's and the installed versions of `names` (None: not installed), not imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
