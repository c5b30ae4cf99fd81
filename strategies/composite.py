"""Composite artifacts: a strategy nesting a two-tower (pipeline, re-ranker, scene router).

A composite whose nested stages include a TensorFlow kind cannot be refitted from a
snapshot alone, and is not itself a model file: its artifact is a directory that holds
the snapshot of its history (what its cheap stages refit on, exactly as `strategies.
snapshot`) and, under ``stages/<stage key>/``, the exported artifact of every nested
TensorFlow stage (a two-tower's NumPy export, with its own manifest and checksums)::

    manifest.json        format, kind, params, seed, data range, metrics, libraries, the
                         stages ({key: kind, params, path}) and the sha256 of every file
    items.npz, interactions.npz, user_features.json      the frozen history
    stages/<key>/...     each TensorFlow stage's artifact version directory

Loading checks every file against the manifest, loads each stage from its artifact (NumPy
only, never TensorFlow), then builds the composite and fits it on the frozen history with
those stages prefitted (`BaseStrategy.use_prefitted`): the cheap stages refit, the
two-tower ones are served as exported.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from abplatform.artifacts import (
    MANIFEST,
    ArtifactError,
    file_sha256,
    library_versions,
    write_version,
)
from abplatform.domain import InteractionLog
from abplatform.registry import build_strategy
from abplatform.strategy import Strategy
from strategies.base import BaseStrategy, ExportableStrategy, stage_key
from strategies.snapshot import (
    TENSORFLOW_KINDS,
    USER_FEATURES,
    history_arrays,
    history_summary,
    read_history,
)

FORMAT = "abplatform.composite"
FORMAT_VERSION = 1
STAGES = "stages"


def tensorflow_stages(strategy: Strategy) -> dict[str, Strategy]:
    """Every fitted TensorFlow stage nested in `strategy`, at any depth, by stage key."""
    found: dict[str, Strategy] = {}
    pending = [strategy]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseStrategy):
            continue
        for key, stage in current.fitted_stages().items():
            if stage.kind in TENSORFLOW_KINDS:
                found[key] = stage
            else:
                pending.append(stage)
    return found


def export_composite(
    root: str | Path,
    *,
    experiment: str,
    variant: str,
    strategy: Strategy,
    params: Mapping[str, Any],
    history: InteractionLog,
    metrics: Mapping[str, float] | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """Write a new composite version of the fitted `strategy` under ``root/experiment/variant``.

    `strategy` must have been fitted on exactly `history` (its cheap stages are refitted on
    it when loaded); `params` are its validated params.
    """
    stages = tensorflow_stages(strategy)
    if not stages:
        raise ArtifactError(
            f"variant {variant!r}: the {strategy.kind!r} strategy nests no fitted "
            "TensorFlow stage; export it as a snapshot"
        )
    raw: dict[str, bytes] = {}
    described: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="abplatform-composite-") as tmp:
        for key, stage in sorted(stages.items()):
            if not isinstance(stage, ExportableStrategy):
                raise ArtifactError(f"variant {variant!r}: stage {key} cannot be exported")
            exported = stage.export(tmp, experiment=STAGES, variant=key, metrics={})
            for file in sorted(p for p in exported.rglob("*") if p.is_file()):
                raw[f"{STAGES}/{key}/{file.relative_to(exported).as_posix()}"] = file.read_bytes()
            stage_params = getattr(stage, "params", None)
            described[key] = {
                "kind": stage.kind,
                "params": stage_params.model_dump(mode="json") if stage_params else {},
                "path": f"{STAGES}/{key}",
            }
    params_doc = json.loads(json.dumps(dict(params), allow_nan=False))
    features = json.dumps(history.user_features, sort_keys=True, allow_nan=False).encode()
    raw[USER_FEATURES] = features
    seed = int(getattr(strategy, "seed", 0))
    digest = hashlib.sha256()
    for name in sorted(raw):
        digest.update(name.encode() + b"\0" + hashlib.sha256(raw[name]).digest())
    head = json.dumps({"kind": strategy.kind, "params": params_doc, "seed": seed}, sort_keys=True)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "experiment": experiment,
        "variant": variant,
        "kind": strategy.kind,
        "params": params_doc,
        "seed": seed,
        "data": history_summary(history),
        "stages": described,
        "metrics": dict(metrics or {}),
        "libraries": library_versions(),
    }
    return write_version(
        root,
        experiment=experiment,
        variant=variant,
        files=history_arrays(history),
        head=head.encode() + digest.digest(),
        manifest=manifest,
        raw=raw,
        now=now,
    )


def load_composite(path: str | Path) -> tuple[Strategy, dict[str, Any]]:
    """The composite of an artifact version directory, rebuilt without TensorFlow, and its
    manifest; every file is checked against the manifest first."""
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
    for name, expected in manifest.get("files", {}).items():
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing")
        if file_sha256(file) != expected:
            raise ArtifactError(f"{file} does not match its checksum in the manifest")
    history = read_history(directory, manifest)
    prefitted = {
        key: _load_stage(directory / str(stage["path"]), str(stage["kind"]))
        for key, stage in manifest.get("stages", {}).items()
    }
    kind, params = str(manifest["kind"]), dict(manifest.get("params", {}))
    # Every TensorFlow stage the params nest must come from the artifact: none is trained here.
    missing = sorted(tensorflow_stage_keys(params) - set(prefitted))
    if missing:
        raise ArtifactError(
            f"{directory}: its {kind!r} params nest TensorFlow stages {', '.join(missing)} "
            "that the artifact does not hold"
        )
    strategy = build_strategy(kind, params, seed=int(manifest.get("seed", 0)))
    if not isinstance(strategy, BaseStrategy):
        raise ArtifactError(f"{directory}: a {kind!r} strategy cannot take prefitted stages")
    strategy.use_prefitted(prefitted)
    strategy.fit(history)
    return strategy, manifest


def tensorflow_stage_keys(params: Mapping[str, Any]) -> set[str]:
    """The `stage_key` of every TensorFlow strategy nested in `params`, at any depth."""
    keys: set[str] = set()
    pending: list[Any] = [params]
    while pending:
        value = pending.pop()
        if isinstance(value, Mapping):
            kind = value.get("kind")
            if isinstance(kind, str) and kind in TENSORFLOW_KINDS:
                keys.add(stage_key(kind, value.get("params", {})))
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
    return keys


def _load_stage(path: Path, kind: str) -> Strategy:
    """One TensorFlow stage from its exported artifact (NumPy only)."""
    if kind == "ranker":
        from strategies.ranker.strategy import RankerStrategy

        return RankerStrategy.from_artifact(path)
    if kind != "two_tower":
        raise ArtifactError(f"{path}: no loader for a stage of kind {kind!r}")
    from strategies.two_tower.strategy import TwoTowerStrategy

    return TwoTowerStrategy.from_artifact(path)
