"""The model registry on a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from abplatform.artifacts import ArtifactMismatch, artifact_sha256
from abplatform.errors import AbplatformError, NotFoundError
from abplatform.storage.db import open_database, transaction
from abplatform.storage.model_registry import (
    ModelRefused,
    NoServingModel,
    get_model,
    list_models,
    params_hash,
    promote,
    register,
    resolve,
    retire,
)


def _artifact(root: Path, name: str) -> tuple[Path, str]:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(f'{{"name": "{name}"}}\n', encoding="utf-8")
    return directory, artifact_sha256(directory)


def _register(engine: Engine, tmp_path: Path, variant: str = "a", **extra: Any) -> int:
    directory, digest = _artifact(tmp_path, f"{variant}-{len(list(tmp_path.iterdir()))}")
    fields: dict[str, Any] = {
        "experiment": "exp",
        "variant": variant,
        "kind": "popularity",
        "params": {"window_days": 30, "per_category": False},
        "seed": 7,
        "catalog": "shop",
        "history_cutoff": datetime(2026, 11, 30, 12, 0, 0),
        "history_rows": 480,
        "artifact_path": directory,
        "artifact_sha256": digest,
        "metrics": {"hit@10": 0.25, "ndcg@10": 0.125},
        **extra,
    }
    with transaction(engine) as session:
        return register(session, **fields).id


@pytest.fixture
def engine(db_url: str) -> Engine:
    return open_database(db_url)


def test_register_counts_versions_per_experiment_and_variant(
    engine: Engine, tmp_path: Path
) -> None:
    first = _register(engine, tmp_path, "a")
    second = _register(engine, tmp_path, "a")
    other = _register(engine, tmp_path, "b")
    with transaction(engine) as session:
        records = {r.id: r for r in list_models(session)}
        assert [records[i].version for i in (first, second, other)] == [1, 2, 1]
        record = get_model(session, second)
        assert list_models(session, experiment="nope") == []
    assert record.status == "candidate" and record.created_at == record.status_changed_at
    assert record.params_hash == params_hash("popularity", record.params)
    assert len(record.params_hash) == 64
    assert Path(record.artifact_path).is_absolute()
    assert record.metrics == {"hit@10": 0.25, "ndcg@10": 0.125}
    assert record.history_cutoff == datetime(2026, 11, 30, 12, 0, 0)
    assert record.to_dict()["history_cutoff"] == "2026-11-30T12:00:00"


def test_params_hash_is_canonical() -> None:
    assert params_hash("popularity", {"a": 1, "b": 2}) == params_hash(
        "popularity", {"b": 2, "a": 1}
    )
    assert params_hash("popularity", {"a": 1}) != params_hash("random", {"a": 1})


def test_register_refuses_bad_input_and_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(AbplatformError, match=r"metric 'ndcg@1' is not finite \(got nan\)"):
        _register(engine, tmp_path, metrics={"ndcg@1": float("nan")})
    with pytest.raises(AbplatformError, match="artifact_sha256 must be 64 hex digits"):
        _register(engine, tmp_path, artifact_sha256="abc")
    with pytest.raises(AbplatformError, match="bad variant ''"):
        _register(engine, tmp_path, variant="")
    with transaction(engine) as session:
        assert list_models(session) == []


def test_concurrent_writers_get_distinct_versions(db_url: str, tmp_path: Path) -> None:
    open_database(db_url).dispose()  # migrated once, before the writers start
    per_writer = 8
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(name: str) -> None:
        engine = open_database(db_url)
        root = tmp_path / name
        root.mkdir()
        try:
            for _ in range(per_writer):
                barrier.wait(timeout=30)  # both count the versions at the same moment
                _register(engine, root, "a")
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            barrier.abort()
        finally:
            engine.dispose()

    threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    engine = open_database(db_url)
    with transaction(engine) as session:
        versions = sorted(r.version for r in list_models(session, "exp"))
    assert versions == list(range(1, 2 * per_writer + 1))


def test_unknown_id_is_named(engine: Engine) -> None:
    with transaction(engine) as session, pytest.raises(NotFoundError, match="no model 99 "):
        get_model(session, 99)
    with transaction(engine) as session, pytest.raises(NotFoundError, match="no model 99 "):
        promote(session, 99)


def test_promote_and_retire(engine: Engine, tmp_path: Path) -> None:
    model = _register(engine, tmp_path)
    with transaction(engine) as session:
        promoted = promote(session, model)
        assert promoted.status == "serving"
        assert promoted.status_changed_at >= promoted.created_at
        assert promote(session, model) == promoted  # idempotent
    with transaction(engine) as session:
        assert retire(session, model).status == "retired"
        assert retire(session, model).status == "retired"
    with transaction(engine) as session, pytest.raises(ModelRefused, match="retired") as info:
        promote(session, model)
    assert f"model {model} (exp/a v1) is retired" in info.value.message


def test_promote_refuses_a_changed_artifact(engine: Engine, tmp_path: Path) -> None:
    model = _register(engine, tmp_path)
    with transaction(engine) as session:
        record = get_model(session, model)
    (Path(record.artifact_path) / "manifest.json").write_text("{}", encoding="utf-8")
    with transaction(engine) as session, pytest.raises(ArtifactMismatch) as info:
        promote(session, model)
    assert record.artifact_path in info.value.message
    assert record.artifact_sha256 in info.value.message
    with transaction(engine) as session:
        assert get_model(session, model).status == "candidate"


def test_resolve_latest_pinned_none_retired_and_wrong_kind(engine: Engine, tmp_path: Path) -> None:
    with transaction(engine) as session, pytest.raises(NoServingModel) as none:
        resolve(session, "exp", "a", "latest")
    assert none.value.hint is not None
    assert "abplatform train FILE" in none.value.hint
    assert "abplatform models promote ID" in none.value.hint

    v1, v2, v3 = (_register(engine, tmp_path) for _ in range(3))
    with transaction(engine) as session:
        promote(session, v1)
        promote(session, v2)
        # The newest serving one; v3 is a candidate: not `latest`, but pinnable.
        assert resolve(session, "exp", "a", "latest").id == v2
        assert resolve(session, "exp", "a", v3, kind="popularity", catalog="shop").id == v3
        retire(session, v2)
        assert resolve(session, "exp", "a", "latest").id == v1  # a rollback
    with transaction(engine) as session, pytest.raises(ModelRefused) as retired:
        resolve(session, "exp", "a", v2)
    assert f"pins model {v2} (exp/a v2), which is retired" in retired.value.message
    with transaction(engine) as session, pytest.raises(ModelRefused) as kind:
        resolve(session, "exp", "a", v1, kind="two_tower")
    assert "strategy kind 'two_tower'" in kind.value.message
    assert f"model {v1} (exp/a v1) is a 'popularity' model" in kind.value.message
    with transaction(engine) as session, pytest.raises(ModelRefused) as catalog:
        resolve(session, "exp", "a", v1, catalog="other")
    assert "catalogue 'other'" in catalog.value.message
    assert "trained on catalogue 'shop'" in catalog.value.message
    with transaction(engine) as session, pytest.raises(NotFoundError, match="no model 404 "):
        resolve(session, "exp", "a", 404)
    with transaction(engine) as session, pytest.raises(AbplatformError, match="got 'newest'"):
        resolve(session, "exp", "a", "newest")
