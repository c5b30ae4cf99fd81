"""Versioned NumPy artifacts of the strategies served from arrays (ALS, EASE): write, read.

A version directory holds ``manifest.json`` (format, format version, kind, params, seed,
metrics, library versions, the sha256 of every file) and ``.npy`` / ``.npz`` files, one of
them ``items.npz``, the catalogue. `read_version` checks every file against the manifest
before anything is loaded, so every API worker serves exactly what was exported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from abplatform.artifacts import (
    MANIFEST,
    ArtifactError,
    file_sha256,
    library_versions,
    write_version,
)
from abplatform.domain import Catalog
from strategies.base import ArtifactPlace

LIBRARIES = ("numpy", "scipy", "implicit", "abplatform")
"""Packages whose versions the manifest records."""


def catalog_arrays(catalog: Catalog) -> dict[str, npt.NDArray[Any]]:
    """The catalogue's columns as the arrays of ``items.npz``."""
    return {
        "item_ids": catalog.item_ids.astype(str),
        "categories": catalog.categories.astype(str),
        "brands": catalog.brands.astype(str),
        "prices": catalog.prices.astype(np.float64),
        **({} if catalog.tags is None else {"tags": catalog.tags.astype(str)}),
    }


def catalog_of(items: Mapping[str, npt.NDArray[Any]]) -> Catalog:
    """The catalogue stored by `catalog_arrays`."""
    return Catalog(
        item_ids=items["item_ids"],
        categories=items["categories"],
        brands=items["brands"],
        prices=items["prices"],
        tags=items.get("tags"),
    )


def export_version(
    root: str | Path,
    *,
    format_name: str,
    format_version: int,
    files: Mapping[str, Mapping[str, npt.NDArray[Any]]],
    manifest: Mapping[str, Any],
    place: ArtifactPlace,
) -> Path:
    """Write `files` and the manifest as a new version under ``root/experiment/variant``."""
    document = {
        **manifest,
        "format": format_name,
        "format_version": format_version,
        "experiment": place["experiment"],
        "variant": place["variant"],
        "metrics": dict(place.get("metrics") or {}),
        "libraries": library_versions(LIBRARIES),
    }
    head = json.dumps(
        {
            "kind": manifest.get("kind"),
            "params": manifest.get("params"),
            "seed": manifest.get("seed"),
        },
        sort_keys=True,
    )
    return write_version(
        root,
        experiment=place["experiment"],
        variant=place["variant"],
        files=files,
        head=head.encode(),
        manifest=document,
    )


def read_version(
    path: str | Path, *, format_name: str, format_version: int, files: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, {file: array or {name: array}}) of a version, every file's sha256 checked.

    Raises `ArtifactError` naming the file when the manifest is unreadable or of another
    format, or a file is missing, unlisted or changed.
    """
    directory = Path(path)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {directory / MANIFEST}: {exc}") from None
    if manifest.get("format") != format_name or manifest.get("format_version") != format_version:
        raise ArtifactError(
            f"{directory} holds format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r}; expected {format_name!r} version {format_version}"
        )
    checksums: dict[str, str] = manifest.get("files", {})
    arrays: dict[str, Any] = {}
    for name in files:
        file = directory / name
        if name not in checksums:
            raise ArtifactError(f"{directory} has no {name} in its manifest")
        if not file.is_file():
            raise ArtifactError(f"{file} is missing")
        if file_sha256(file) != checksums[name]:
            raise ArtifactError(f"{file} does not match its checksum in the manifest")
        if name.endswith(".npz"):
            with np.load(file, allow_pickle=False) as loaded:
                arrays[name] = dict(loaded.items())
        else:
            arrays[name] = np.load(file, allow_pickle=False)
    return manifest, arrays
