"""Snapshot artifacts: every kind without its own format serves the same slates after loading."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abplatform.artifacts import ArtifactError, ArtifactMismatch, artifact_sha256, verify_artifact
from abplatform.domain import InteractionLog
from abplatform.registry import build_strategy, strategies
from abplatform.storage.model_registry import ModelRecord, params_hash
from strategies.registered import OWN_FORMAT_KINDS, load_model
from strategies.snapshot import (
    TRAINERS,
    export_snapshot,
    load_snapshot,
    needs_tensorflow,
    needs_training,
)
from tests.factories import make_history
from tests.strategies.test_contract import CASES, requests

ROOT = Path(__file__).resolve().parents[2]
SEED = 5
SNAPSHOT_CASES = [
    pytest.param(kind, params, id=f"{kind}-{i}")
    for kind in strategies.names()
    if kind not in OWN_FORMAT_KINDS
    for i, params in enumerate(CASES[kind])
    if not needs_tensorflow(kind, params)  # composites nesting a two-tower: test_composite.py
]


def _history() -> InteractionLog:
    """The contract history with tags and user profiles, so every column is frozen too."""
    log = make_history()
    tags = np.array([f"t{i % 3}|t{i % 5}" for i in range(len(log.catalog))])
    features = {f"user-{u}": {"age": 20 + u, "segment": f"s{u % 2}"} for u in range(10)}
    return dataclasses.replace(
        log, catalog=dataclasses.replace(log.catalog, tags=tags), user_features=features
    )


def _record(kind: str, params: dict[str, Any], path: Path, model_id: int = 1) -> ModelRecord:
    now = datetime(2026, 12, 3)
    return ModelRecord(
        id=model_id,
        experiment="exp",
        variant="v",
        version=1,
        kind=kind,
        params=params,
        params_hash=params_hash(kind, params),
        seed=SEED,
        catalog="shop",
        history_cutoff=None,
        history_rows=0,
        artifact_path=str(path),
        artifact_sha256=artifact_sha256(path),
        metrics={},
        status="serving",
        created_at=now,
        status_changed_at=now,
    )


def _export(kind: str, params: dict[str, Any], root: Path) -> tuple[Any, Path, dict[str, Any]]:
    fitted = build_strategy(kind, params, seed=SEED)
    history = _history()
    fitted.fit(history)
    validated = fitted.Params.model_validate(params).model_dump(mode="json")
    path = export_snapshot(
        root,
        experiment="exp",
        variant="v",
        kind=kind,
        params=validated,
        seed=SEED,
        history=history,
        metrics={"hit@10": 0.5},
    )
    return fitted, path, validated


def test_every_kind_without_its_own_format_has_a_snapshot_case() -> None:
    assert set(TRAINERS) <= OWN_FORMAT_KINDS
    assert {p.values[0] for p in SNAPSHOT_CASES} == set(strategies.names()) - OWN_FORMAT_KINDS


@pytest.mark.parametrize(("kind", "params"), SNAPSHOT_CASES)
def test_loaded_snapshot_serves_the_fitted_strategys_slates(
    kind: str, params: dict[str, Any], tmp_path: Path
) -> None:
    fitted, path, validated = _export(kind, params, tmp_path)
    served = load_model(_record(kind, validated, path))
    sample = requests(_history())
    for k in (1, 5, 10):
        assert served.recommend_batch(sample, k) == fitted.recommend_batch(sample, k)
    assert [served.recommend(r, 7) for r in sample] == [fitted.recommend(r, 7) for r in sample]


def test_snapshot_freezes_the_history_and_records_the_fit(tmp_path: Path) -> None:
    history = _history()
    _, path, validated = _export("popularity", {"per_category": True}, tmp_path)
    snapshot = load_snapshot(path)
    assert snapshot.kind == "popularity" and snapshot.seed == SEED
    assert snapshot.params == validated
    frozen = snapshot.history
    assert frozen.user_features == history.user_features
    for column in ("user_ids", "item_ids", "event_types", "timestamps"):
        assert np.array_equal(getattr(frozen, column), getattr(history, column))
    assert np.array_equal(frozen.values, history.values, equal_nan=True)
    assert frozen.catalog.tags is not None and history.catalog.tags is not None
    assert np.array_equal(frozen.catalog.tags, history.catalog.tags)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "abplatform.snapshot" and manifest["format_version"] == 1
    assert manifest["metrics"] == {"hit@10": 0.5}
    assert manifest["data"]["interactions"] == len(history)
    assert set(manifest["files"]) == {"items.npz", "interactions.npz", "user_features.json"}
    assert (path.parent / "LATEST").read_text().strip() == path.name
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_a_changed_or_missing_artifact_is_refused_naming_path_and_checksums(
    tmp_path: Path,
) -> None:
    _, path, validated = _export("popularity", {}, tmp_path)
    record = _record("popularity", validated, path)
    (path / "interactions.npz").write_bytes(b"not the frozen history")
    with pytest.raises(ArtifactMismatch) as info:
        load_model(record)
    message = info.value.message
    assert str(path.resolve()) in message
    assert record.artifact_sha256 in message and artifact_sha256(path) in message
    moved = dataclasses.replace(record, artifact_path=str(tmp_path / "gone"))
    with pytest.raises(ArtifactError, match=f"artifact directory {tmp_path / 'gone'} does not"):
        load_model(moved)
    with pytest.raises(ArtifactError, match="does not exist"):
        verify_artifact(tmp_path / "gone", record.artifact_sha256)


def test_a_record_of_another_kind_or_params_is_refused(tmp_path: Path) -> None:
    _, path, validated = _export("popularity", {}, tmp_path)
    with pytest.raises(ArtifactError, match="holds a 'popularity' model, but model 1 is regi"):
        load_model(_record("random", {}, path))
    other = _record("popularity", {**validated, "window_days": 99}, path)
    with pytest.raises(ArtifactError, match="other params than model 1 records"):
        load_model(other)


def test_a_composite_nesting_two_tower_is_not_snapshotted(tmp_path: Path) -> None:
    params = {"base": {"kind": "two_tower", "params": {}}, "lambda": 0.3}
    assert needs_tensorflow("diversity_rerank", params)
    assert not needs_tensorflow("diversity_rerank", {"base": {"kind": "popularity"}})
    with pytest.raises(ArtifactError, match="nesting TensorFlow cannot be snapshotted"):
        export_snapshot(
            tmp_path,
            experiment="exp",
            variant="v",
            kind="diversity_rerank",
            params=params,
            seed=0,
            history=_history(),
        )
    with pytest.raises(ArtifactError, match="cannot be a directory name"):
        export_snapshot(
            tmp_path, experiment="..", variant="v", kind="random", params={}, seed=0,
            history=_history(),
        )  # fmt: skip


def test_a_composite_nesting_als_is_not_snapshotted(tmp_path: Path) -> None:
    params = {"base": {"kind": "als", "params": {}}, "lambda": 0.3}
    assert needs_training("diversity_rerank", params)
    assert not needs_tensorflow("diversity_rerank", params)
    assert not needs_training("diversity_rerank", {"base": {"kind": "ease"}})
    with pytest.raises(ArtifactError, match="nesting implicit cannot be snapshotted"):
        export_snapshot(
            tmp_path,
            experiment="exp",
            variant="v",
            kind="diversity_rerank",
            params=params,
            seed=0,
            history=_history(),
        )


def test_loading_a_model_never_imports_tensorflow(tmp_path: Path) -> None:
    kind = "scene_router"
    _, path, validated = _export(kind, CASES[kind][0], tmp_path)
    record = json.dumps(_record(kind, validated, path).to_dict())
    code = f"""
        import json, sys
        from datetime import datetime
        from abplatform.domain import RecRequest
        from abplatform.storage.model_registry import ModelRecord
        from strategies.registered import OWN_FORMAT_KINDS, load_model
        import strategies.two_tower.strategy  # the two-tower loader's module, too

        doc = json.loads({record!r})
        for name in ("history_cutoff", "created_at", "status_changed_at"):
            doc[name] = datetime.fromisoformat(doc[name]) if doc[name] else None
        strategy = load_model(ModelRecord(**doc))
        assert len(strategy.recommend(RecRequest("user-1"), 5).items) == 5
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_there_is_one_artifact_error_class() -> None:
    from strategies.two_tower import artifact

    assert artifact.ArtifactError is ArtifactError
    assert issubclass(ArtifactMismatch, ArtifactError)
