"""Model artifact directories on disk: checksums and the check made before one is loaded.

An artifact is a directory of files (a two-tower export, a snapshot of a cheap strategy).
Its one digest, `artifact_sha256`, is the sha256 of the sorted ``"<relative path>
<sha256>"`` lines of every file in it, so any changed, added or removed file changes it.
This module needs neither TensorFlow nor the strategy plug-ins.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

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


LATEST = "LATEST"
"""The file of a variant directory that names its newest version."""
MANIFEST = "manifest.json"

ArrayFiles = Mapping[str, Mapping[str, Any]]
"""{file name: {array name: array}}: ``*.npy`` files hold the one array named ``""``."""


def check_place(label: str, name: str) -> None:
    """Refuse an experiment or variant name that cannot be one directory."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ArtifactError(f"{label} {name!r} cannot be a directory name")


def content_hash(files: ArrayFiles, head: bytes) -> str:
    """sha256 of `head` and every array (name, dtype, shape, bytes), in name order."""
    import numpy as np

    digest = hashlib.sha256(head)
    for name in sorted(files):
        for key in sorted(files[name]):
            array = np.ascontiguousarray(files[name][key])
            digest.update(f"{name}/{key}/{array.dtype.str}/{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def write_version(
    root: str | Path,
    *,
    experiment: str,
    variant: str,
    files: ArrayFiles,
    head: bytes,
    manifest: Mapping[str, Any],
    raw: Mapping[str, bytes] | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """Write a new version directory ``root/experiment/variant/<UTC time>-<content hash>``.

    The arrays (`files`), the `raw` files and ``manifest.json`` (`manifest` plus
    ``version``, ``created_at`` and the sha256 of every file) are written into a hidden
    temporary directory that is then renamed into place, and ``LATEST`` is replaced
    atomically to name it: readers never see half of a version. `head` (what the arrays
    alone do not say, e.g. the params) enters the content hash.
    """
    import numpy as np

    check_place("experiment", experiment)
    check_place("variant", variant)
    created = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    version_name = f"{created:%Y%m%dT%H%M%SZ}-{content_hash(files, head)[:10]}"
    parent = Path(root) / experiment / variant
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / version_name
    staging = parent / f".tmp-{version_name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        checksums = {}
        for name, arrays in files.items():
            with (staging / name).open("wb") as handle:
                if name.endswith(".npy"):
                    np.save(handle, arrays[""], allow_pickle=False)
                else:
                    np.savez(handle, **arrays)
            checksums[name] = file_sha256(staging / name)
        for name, content in (raw or {}).items():  # a name may hold directories: a/b.npz
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(content)
            checksums[name] = file_sha256(staging / name)
        document = {
            **manifest,
            "version": version_name,
            "created_at": created.isoformat(timespec="seconds"),
            "files": checksums,
        }
        (staging / MANIFEST).write_text(
            json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        if target.exists():
            shutil.rmtree(target)  # same second and same content: replace it
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = parent / f".{LATEST}.tmp-{os.getpid()}"
    pointer.write_text(version_name + "\n", encoding="utf-8")
    os.replace(pointer, parent / LATEST)
    return target
