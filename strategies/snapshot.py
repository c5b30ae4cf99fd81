"""Snapshot artifacts of the strategies trained by nothing offline: the frozen data of a fit.

Popularity, co-purchase statistics, similar items, random, scene routers and diversity
re-rankers fit in a fraction of a second and deterministically from (kind, params, seed,
history). Their artifact is therefore that fit's input, not its output: loading a snapshot
refits the kind on the frozen data and serves exactly the slates the exported fit served.

Layout of ``<root>/<experiment>/<variant>/<version>/`` (version = UTC time + content hash,
as the two-tower artifact's, so artifacts of two databases never collide)::

    manifest.json        format, format version, kind, params, seed, data range, metrics,
                         library versions, sha256 of every file below
    items.npz            the catalogue: item_ids, categories, brands, prices (, tags)
    interactions.npz     user, item and event type columns (distinct values + int32 codes),
                         values, timestamps; in the history's (time) order
    user_features.json   {user_id: {feature: value}} of the catalogue's users

``<root>/<experiment>/<variant>/LATEST`` names the newest version. A version is written
into a hidden temporary directory and renamed into place, so readers never see half of one.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from abplatform.artifacts import (
    MANIFEST,
    ArtifactError,
    check_place,
    file_sha256,
    library_versions,
    write_version,
)
from abplatform.domain import Catalog, InteractionLog
from abplatform.registry import build_strategy, strategies
from abplatform.strategy import Strategy

FORMAT = "abplatform.snapshot"
FORMAT_VERSION = 1
TENSORFLOW_KINDS = frozenset({"two_tower", "ranker"})
"""Kinds whose fit trains a TensorFlow model."""
TRAINERS: dict[str, str] = {"two_tower": "TensorFlow", "ranker": "TensorFlow", "als": "implicit"}
"""Kinds trained offline into an artifact of their own, and what trains them: never refitted
from a snapshot nor fitted when a server starts (servers load the artifact)."""
_ARRAY_FILES = ("items.npz", "interactions.npz")
USER_FEATURES = "user_features.json"


def nested_kinds(kind: str, params: Mapping[str, Any]) -> set[str]:
    """`kind` and every strategy kind nested in its params (routes, re-ranker bases)."""
    found = {kind}
    known = set(strategies.names())

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            inner = value.get("kind")
            if isinstance(inner, str) and inner in known:
                found.add(inner)
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(params)
    return found


def needs_tensorflow(kind: str, params: Mapping[str, Any]) -> bool:
    """Whether fitting (kind, params) trains TensorFlow, itself or in a nested strategy."""
    return bool(nested_kinds(kind, params) & TENSORFLOW_KINDS)


def trained_kinds(kind: str, params: Mapping[str, Any]) -> list[str]:
    """The `TRAINERS` kinds that (kind, params) is or nests, sorted (empty: none)."""
    return sorted(nested_kinds(kind, params) & set(TRAINERS))


def needs_training(kind: str, params: Mapping[str, Any]) -> bool:
    """Whether fitting (kind, params) trains an offline model (TensorFlow, implicit), itself
    or in a nested strategy: such a fit is exported as its own artifact, never a snapshot."""
    return bool(trained_kinds(kind, params))


@dataclass(frozen=True)
class Snapshot:
    """A loaded snapshot: what to build and the history to fit it on."""

    kind: str
    params: dict[str, Any]
    seed: int
    history: InteractionLog
    manifest: dict[str, Any]

    def fit(self) -> Strategy:
        """The strategy refitted on the frozen history: it serves what the exported fit did."""
        if needs_training(self.kind, self.params):
            raise ArtifactError(
                f"snapshot of kind {self.kind!r} nests a trained strategy "
                f"({', '.join(trained_kinds(self.kind, self.params))})"
                "; it cannot be refitted without training",
            )
        strategy = build_strategy(self.kind, self.params, seed=self.seed)
        strategy.fit(self.history)
        return strategy


def history_arrays(history: InteractionLog) -> dict[str, dict[str, npt.NDArray[Any]]]:
    """The frozen history as `write_version` files: items.npz and interactions.npz."""
    catalog = history.catalog
    return {
        "items.npz": {
            "item_ids": catalog.item_ids.astype(str),
            "categories": catalog.categories.astype(str),
            "brands": catalog.brands.astype(str),
            "prices": catalog.prices.astype(np.float64),
            **({} if catalog.tags is None else {"tags": catalog.tags.astype(str)}),
        },
        "interactions.npz": {
            **_coded("user", history.user_ids),
            **_coded("item", history.item_ids),
            **_coded("type", history.event_types),
            "values": history.values.astype(np.float64),
            "timestamps": history.timestamps.astype(np.int64),
        },
    }


def _coded(name: str, column: npt.NDArray[np.str_]) -> dict[str, npt.NDArray[Any]]:
    """A text column as its sorted distinct values and int32 codes (a tenth of the bytes)."""
    vocabulary, codes = np.unique(column.astype(str), return_inverse=True)
    return {f"{name}_vocabulary": vocabulary, f"{name}_codes": codes.astype(np.int32)}


def _decoded(arrays: Mapping[str, npt.NDArray[Any]], name: str) -> npt.NDArray[np.str_]:
    """The text column `_coded` stored, in its original order."""
    vocabulary = arrays[f"{name}_vocabulary"]
    decoded: npt.NDArray[np.str_] = vocabulary[arrays[f"{name}_codes"]].astype(vocabulary.dtype)
    return decoded


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def export_snapshot(
    root: str | Path,
    *,
    experiment: str,
    variant: str,
    kind: str,
    params: Mapping[str, Any],
    seed: int,
    history: InteractionLog,
    metrics: Mapping[str, float] | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """Write a new snapshot version under ``root/experiment/variant``; return its directory.

    `params` are the strategy's validated params; `history` is exactly what the exported
    fit used. A kind that is or nests a trained kind (see `needs_training`) is refused.
    """
    check_place("experiment", experiment)
    check_place("variant", variant)
    strategies.get(kind)  # an unknown kind names the known ones
    if needs_training(kind, params):
        raise ArtifactError(
            f"variant {variant!r}: a {kind!r} strategy nesting "
            f"{', '.join(TRAINERS[k] for k in trained_kinds(kind, params))} cannot be snapshotted",
            hint="serve the trained model as its own variant",
        )
    params_doc = json.loads(json.dumps(dict(params), allow_nan=False))
    features = json.dumps(history.user_features, sort_keys=True, allow_nan=False).encode()
    head = json.dumps({"kind": kind, "params": params_doc, "seed": seed}, sort_keys=True)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "experiment": experiment,
        "variant": variant,
        "kind": kind,
        "params": params_doc,
        "seed": int(seed),
        "data": history_summary(history),
        "metrics": dict(metrics or {}),
        "libraries": library_versions(),
    }
    return write_version(
        root,
        experiment=experiment,
        variant=variant,
        files=history_arrays(history),
        head=head.encode() + features,
        manifest=manifest,
        raw={USER_FEATURES: features},
        now=now,
    )


def history_summary(history: InteractionLog) -> dict[str, Any]:
    """What a manifest says of the frozen history: its size and time range."""
    stamps = history.timestamps
    return {
        "interactions": len(history),
        "users": int(np.unique(history.user_ids).size),
        "items": len(history.catalog),
        "start": _iso(int(stamps.min())) if len(history) else None,
        "end": _iso(int(stamps.max())) if len(history) else None,
    }


def load_snapshot(path: str | Path) -> Snapshot:
    """Read a snapshot version directory, checking every file against its manifest."""
    directory = Path(path)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {directory / MANIFEST}: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} holds format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r}; expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    history = read_history(directory, manifest)
    return Snapshot(
        kind=str(manifest["kind"]),
        params=dict(manifest.get("params", {})),
        seed=int(manifest.get("seed", 0)),
        history=history,
        manifest=manifest,
    )


def read_history(directory: Path, manifest: Mapping[str, Any]) -> InteractionLog:
    """The frozen history of an artifact directory, every file checked against `manifest`."""
    checksums: dict[str, str] = manifest.get("files", {})
    for name in (*_ARRAY_FILES, USER_FEATURES):
        file = directory / name
        if name not in checksums:
            raise ArtifactError(f"{directory} has no {name} in its manifest")
        if not file.is_file():
            raise ArtifactError(f"{file} is missing")
        if file_sha256(file) != checksums[name]:
            raise ArtifactError(f"{file} does not match its checksum in the manifest")
    with np.load(directory / "items.npz", allow_pickle=False) as loaded:
        items = dict(loaded.items())
    with np.load(directory / "interactions.npz", allow_pickle=False) as loaded:
        rows = dict(loaded.items())
    features = json.loads((directory / USER_FEATURES).read_text(encoding="utf-8"))
    return InteractionLog(
        catalog=Catalog(
            item_ids=items["item_ids"],
            categories=items["categories"],
            brands=items["brands"],
            prices=items["prices"],
            tags=items.get("tags"),
        ),
        user_ids=_decoded(rows, "user"),
        item_ids=_decoded(rows, "item"),
        event_types=_decoded(rows, "type"),
        values=rows["values"],
        timestamps=rows["timestamps"],
        user_features=features,
    )
