"""ALS and EASE: the EASE oracle, ALS artifacts, positive selection and explicit ratings."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose

from abplatform.artifacts import ArtifactError, ArtifactMismatch
from abplatform.catalog_ingest import ingest_catalog
from abplatform.domain import Catalog, InteractionLog, RecRequest
from abplatform.registry import build_strategy
from abplatform.storage.catalog import load_history
from abplatform.storage.db import open_database
from strategies.als import AlsParams, AlsStrategy, load_als_artifact
from strategies.ease import EaseParams, EaseStrategy, ease_weights
from strategies.positives import PositiveParams, positive_matrix
from strategies.registered import load_model
from tests.factories import make_history
from tests.strategies.test_contract import requests
from tests.strategies.test_snapshot import _record

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000


def _log(rows: list[tuple[str, str, str, float]], n_items: int = 4) -> InteractionLog:
    """A history of (user, item, type, value) rows over items i0..i{n-1}, one second apart."""
    catalog = Catalog(
        item_ids=np.array([f"i{j}" for j in range(n_items)]),
        categories=np.array(["c"] * n_items),
        brands=np.array(["b"] * n_items),
        prices=np.ones(n_items),
    )
    users, items, types, values = zip(*rows, strict=True) if rows else ((), (), (), ())
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array(users, dtype=str),
        item_ids=np.array(items, dtype=str),
        event_types=np.array(types, dtype=str),
        values=np.array(values, dtype=np.float64),
        timestamps=T0 + np.arange(len(rows), dtype=np.int64),
    )


# -- EASE ----------------------------------------------------------------------------------


def test_ease_two_items_by_hand() -> None:
    # X (users a, b, c): a = {i0, i1}, b = {i0}, c = {i0, i1}, so G = X^T X = [[3, 2], [2, 2]].
    # lambda = 1: G + I = [[4, 2], [2, 3]], det 8, P = [[3, -2], [-2, 4]] / 8, B_ij = -P_ij / P_jj:
    # B_01 = (2/8) / (4/8) = 1/2 and B_10 = (2/8) / (3/8) = 2/3. The same as a ridge regression
    # of item j on the other item: <x0, x1> / (|x_i|^2 + lambda) = 2/4 and 2/3.
    gram = np.array([[3.0, 2.0], [2.0, 2.0]])
    weights = ease_weights(gram, 1.0)
    assert_allclose(weights, [[0.0, 0.5], [2.0 / 3.0, 0.0]], rtol=1e-12)
    log = _log(
        [
            ("a", "i0", "click", 1),
            ("a", "i1", "click", 1),
            ("b", "i0", "click", 1),
            ("c", "i0", "purchase", 1),
            ("c", "i1", "click", 1),
        ],
        n_items=2,
    )
    ease = EaseStrategy({"lambda": 1.0, "exclude_purchased": False})
    ease.fit(log)
    # b has only i0: scores x_b B = [0, B_01] = [0, 0.5].
    slate = ease.recommend(RecRequest("b"), 2)
    assert slate.items == ("i1", "i0")
    assert_allclose(slate.scores, [0.5, 0.0], rtol=1e-12)


def test_ease_equals_per_item_ridge_regressions() -> None:
    # Steck (2019): column j of B is the ridge regression of item j on every other item.
    log = make_history(seed=3, n_items=25, n_users=30, n_events=400)
    l2 = 7.5
    ease = EaseStrategy({"lambda": l2, "binary": False, "weights": {"click": 1, "purchase": 3}})
    ease.fit(log)
    matrix = positive_matrix(log, ease.params)
    x = np.zeros((matrix.n_users, matrix.n_items))
    for row in range(matrix.n_users):
        span = slice(matrix.indptr[row], matrix.indptr[row + 1])
        x[row, matrix.items[span]] = matrix.weights[span]
    oracle = np.zeros((matrix.n_items, matrix.n_items))
    for j in range(matrix.n_items):
        others = np.delete(np.arange(matrix.n_items), j)
        a = x[:, others]
        beta = np.linalg.solve(a.T @ a + l2 * np.eye(others.size), a.T @ x[:, j])
        oracle[others, j] = beta
    assert_allclose(ease_weights(x.T @ x, l2), oracle, rtol=1e-9, atol=1e-12)
    # The strategy keeps B in float32 (what it serves and exports): one rounding per entry.
    assert_allclose(ease.artifact.weights, oracle, rtol=2**-23, atol=1e-30)
    user = str(matrix.user_ids[4])
    slate = ease.recommend(RecRequest(user), matrix.n_items)
    expected = x[4] @ oracle
    index = log.catalog.index()
    # Scored in float32 (as B is stored): within float32 rounding of the exact x B.
    scale = np.abs(x[4]) @ np.abs(oracle)
    got = np.array(slate.scores)
    want = np.array([expected[index[i]] for i in slate.items])
    assert np.all(np.abs(got - want) <= 1e-6 * scale[[index[i] for i in slate.items]] + 1e-12)
    # Items the user bought come last (exclude_purchased), the rest by score.
    bought = {str(i) for u, i, t in zip(log.user_ids, log.item_ids, log.event_types, strict=True)
              if u == user and t == "purchase"}  # fmt: skip
    assert bought and set(slate.items[-len(bought) :]) == bought


def test_ease_served_from_its_artifact_equals_the_fitted_model(tmp_path: Path) -> None:
    fitted = EaseStrategy({"lambda": 50.0}, seed=5)
    fitted.fit(make_history())
    path = fitted.export(tmp_path, experiment="exp", variant="v", metrics={"hit@10": 0.5})
    validated = EaseParams.model_validate({"lambda": 50.0}).model_dump(mode="json")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "abplatform.ease" and manifest["params"] == validated
    record = dataclasses.replace(_record("ease", validated, path), seed=5)
    served = load_model(record)
    assert isinstance(served, EaseStrategy)
    sample = requests(make_history())
    for k in (1, 5, 10):
        assert served.recommend_batch(sample, k) == fitted.recommend_batch(sample, k)
    weights = path / "weights.npy"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    with pytest.raises(ArtifactMismatch, match="does not match its recorded checksum"):
        load_model(record)
    with pytest.raises(ArtifactError, match=r"weights.npy does not match its checksum"):
        EaseStrategy.from_artifact(path)


def test_ease_zero_lambda_with_an_unchosen_item_is_a_clear_error() -> None:
    log = _log([("a", "i0", "click", 1), ("a", "i1", "click", 1), ("b", "i1", "click", 1)], 3)
    with pytest.raises(Exception, match=r"singular \(lambda 0.0\)"):
        EaseStrategy({"lambda": 0}).fit(log)


# -- positives and explicit ratings ----------------------------------------------------------


def test_positive_events_and_min_rating_choose_the_rows() -> None:
    log = _log(
        [
            ("a", "i0", "rating", 5.0),
            ("a", "i1", "rating", 3.0),  # below min_rating
            ("a", "i2", "rating", float("nan")),  # a rating without a value never counts
            ("a", "i3", "view", 1.0),
            ("b", "i1", "click", 1.0),
            ("b", "i1", "purchase", 9.0),
            ("b", "i9", "click", 1.0),  # not in the catalogue
        ]
    )
    default = positive_matrix(log, PositiveParams())
    assert default.user_ids.tolist() == ["b"]
    assert default.items.tolist() == [1] and default.weights.tolist() == [5.0]  # 1 + 4
    ratings = positive_matrix(log, PositiveParams(positive_events=("click",), min_rating=4))
    assert ratings.user_ids.tolist() == ["a", "b"]
    assert ratings.items.tolist() == [0, 1] and ratings.weights.tolist() == [1.0, 1.0]
    every = positive_matrix(
        log, PositiveParams(positive_events=("rating", "view"), weights={"view": 0.5})
    )
    assert every.user_ids.tolist() == ["a"]
    assert every.items.tolist() == [0, 1, 2, 3]
    assert every.weights.tolist() == [1.0, 1.0, 1.0, 0.5]


def _ratings_catalogue(folder: Path) -> InteractionLog:
    """A catalogue ingested with `type: rating`: group A rates i0-i4 high and i5-i9 low."""
    items, interactions = folder / "items.csv", folder / "interactions.csv"
    with items.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["item_id", "category"])
        out.writerows([f"i{j}", f"c{j // 5}"] for j in range(10))
    rng = np.random.default_rng(4)
    with interactions.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["user_id", "item_id", "timestamp", "type", "value"])
        for u in range(40):
            liked = range(0, 5) if u % 2 == 0 else range(5, 10)
            for j in rng.permutation(10)[:7].tolist():
                rating = 5 if j in liked else 1
                out.writerow([f"u{u}", f"i{j}", T0 + 100 * u + j, "rating", rating])
    engine = open_database(f"sqlite:///{folder / 'ratings.db'}")
    ingest_catalog(engine, "films", items=items, interactions=interactions)
    with engine.connect() as conn:
        history = load_history(conn, "films")
    engine.dispose()
    return history


@pytest.mark.parametrize("kind", ["als", "ease"])
def test_a_rating_catalogue_trains_without_relabelling(kind: str, tmp_path: Path) -> None:
    history = _ratings_catalogue(tmp_path)
    assert set(history.event_types.tolist()) == {"rating"}
    extra: dict[str, Any] = {"factors": 4, "regularization": 0.01} if kind == "als" else {}
    # The default positives (click, purchase) see nothing here: popularity of nothing.
    strategy = build_strategy(kind, {"min_rating": 4, **extra}, seed=1)
    strategy.fit(history)
    # An even user liked i0-i4: their unrated liked items rank above every disliked one.
    index = history.catalog.index()
    for user in ("u0", "u2", "u1", "u3"):
        liked = {f"i{j}" for j in (range(0, 5) if user in ("u0", "u2") else range(5, 10))}
        rated = set(history.item_ids[history.user_ids == user].tolist())
        slate = strategy.recommend(RecRequest(user), 10)
        unrated = [item for item in slate.items if item not in rated]
        wanted = [item for item in unrated if item in liked]
        assert unrated[: len(wanted)] == wanted, (user, slate, index)


# -- ALS --------------------------------------------------------------------------------------


def _planted(seed: int = 0) -> InteractionLog:
    """60 users in two halves that click 5 of their own half of 20 items each."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        own = np.arange(10) + (10 if u % 2 else 0)
        for j in rng.choice(own, size=5, replace=False).tolist():
            rows.append((f"u{u}", f"i{j}", "click", 1.0))
    return _log(rows, n_items=20)


def test_als_learns_the_planted_groups_and_is_seeded() -> None:
    log = _planted()
    params = {"factors": 2, "iterations": 10, "regularization": 0.1}  # the data has rank 2
    first = build_strategy("als", params, seed=3)
    first.fit(log)
    again = build_strategy("als", params, seed=3)
    again.fit(log)
    other = build_strategy("als", params, seed=4)
    other.fit(log)
    assert isinstance(first, AlsStrategy) and isinstance(again, AlsStrategy)
    assert isinstance(other, AlsStrategy)
    assert np.array_equal(first.artifact.item_factors, again.artifact.item_factors)
    assert np.array_equal(first.artifact.user_factors, again.artifact.user_factors)
    assert not np.array_equal(first.artifact.item_factors, other.artifact.item_factors)
    for u in range(0, 60, 7):
        own = {f"i{j + (10 if u % 2 else 0)}" for j in range(10)}
        seen = set(log.item_ids[log.user_ids == f"u{u}"].tolist())
        unseen = [i for i in first.recommend(RecRequest(f"u{u}"), 20).items if i not in seen]
        assert set(unseen[: len(own - seen)]) == own - seen, u
    # A new user on the product page of i12 is folded in: the second half's items first.
    cold = first.recommend(RecRequest("new", current_item="i12"), 10)
    assert set(cold.items) == {f"i{j}" for j in range(10, 20)}


def test_als_fold_in_is_the_exact_user_step() -> None:
    log = _planted(1)
    als = AlsStrategy({"factors": 3, "alpha": 2.0, "regularization": 0.1}, seed=0)
    als.fit(log)
    als._prepare_serving()
    y = als.artifact.item_factors.astype(np.float64) * als.artifact.item_scale
    chosen = np.array([2, 5])
    # argmin_u sum_i c_i (p_i - u.y_i)^2 + reg |u|^2, c = 1 + alpha on i2, i5 and 1 elsewhere.
    c = np.ones(len(y))
    c[chosen] = 3.0
    p = np.zeros(len(y))
    p[chosen] = 1.0
    expected = np.linalg.solve((y.T * c) @ y + 0.1 * np.eye(3), (y.T * c) @ p)
    query = als._fold_in(chosen)
    assert_allclose(query / np.abs(query).max(), expected / np.abs(expected).max(), atol=1e-5)


def test_als_excludes_what_a_user_bought() -> None:
    log = make_history()
    user = "user-3"
    bought = set(log.item_ids[(log.user_ids == user) & (log.event_types == "purchase")].tolist())
    assert bought
    keeps = AlsStrategy({"factors": 8, "exclude_purchased": False}, seed=2)
    keeps.fit(log)
    drops = AlsStrategy({"factors": 8}, seed=2)
    drops.fit(log)
    n = len(log.catalog)
    assert set(drops.recommend(RecRequest(user), n).items[-len(bought) :]) == bought
    assert not bought & set(drops.recommend(RecRequest(user), 10).items)
    assert bought & set(keeps.recommend(RecRequest(user), 10).items)


def test_als_with_nothing_positive_serves_popularity_and_says_why() -> None:
    log = _log([("a", "i0", "view", 1.0), ("b", "i1", "view", 1.0)])
    als = AlsStrategy({})
    als.fit(log)
    assert als.fallback_reason == "the history has no positive interactions on catalogue items"
    assert len(als.recommend(RecRequest("a"), 4).items) == 4


def _exported_als(tmp_path: Path) -> tuple[AlsStrategy, Path, dict[str, Any]]:
    log = make_history()
    params: dict[str, Any] = {"factors": 8, "iterations": 5}
    fitted = AlsStrategy(params, seed=5)
    fitted.fit(log)
    path = fitted.export(tmp_path, experiment="exp", variant="v", metrics={"hit@10": 0.25})
    return fitted, path, AlsParams.model_validate(params).model_dump(mode="json")


def test_als_served_from_its_artifact_equals_the_fitted_model(tmp_path: Path) -> None:
    fitted, path, validated = _exported_als(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "abplatform.als" and manifest["kind"] == "als"
    assert manifest["metrics"] == {"hit@10": 0.25} and manifest["params"] == validated
    assert manifest["libraries"]["implicit"] == "0.7.2"
    assert (path.parent / "LATEST").read_text().strip() == path.name
    served = load_model(dataclasses.replace(_record("als", validated, path), seed=5))
    assert isinstance(served, AlsStrategy)
    assert np.array_equal(served.artifact.item_factors, fitted.artifact.item_factors)
    sample = requests(make_history())
    for k in (1, 5, 10):
        assert served.recommend_batch(sample, k) == fitted.recommend_batch(sample, k)
    assert [served.recommend(r, 7) for r in sample] == [fitted.recommend(r, 7) for r in sample]


def test_a_changed_als_artifact_is_refused(tmp_path: Path) -> None:
    _, path, validated = _exported_als(tmp_path)
    record = _record("als", validated, path)
    factors = path / "item_factors.npy"
    original = factors.read_bytes()
    factors.write_bytes(original[:-4] + b"\x00\x00\x80\x3f")
    with pytest.raises(ArtifactMismatch, match="does not match its recorded checksum"):
        load_model(record)
    with pytest.raises(ArtifactError, match=r"item_factors.npy does not match its checksum"):
        load_als_artifact(path)
    factors.write_bytes(original)
    assert load_model(record).recommend(RecRequest("user-1"), 3).items
    (path / "popularity.npy").unlink()
    with pytest.raises(ArtifactError, match=r"popularity.npy is missing"):
        load_als_artifact(path)


def test_serving_an_als_artifact_never_imports_implicit(tmp_path: Path) -> None:
    _, path, validated = _exported_als(tmp_path)
    record = json.dumps(_record("als", validated, path).to_dict())
    code = f"""
        import json, sys
        from datetime import datetime
        from abplatform.domain import RecRequest
        from abplatform.storage.model_registry import ModelRecord
        from strategies.registered import load_model

        doc = json.loads({record!r})
        for name in ("history_cutoff", "created_at", "status_changed_at"):
            doc[name] = datetime.fromisoformat(doc[name]) if doc[name] else None
        strategy = load_model(ModelRecord(**doc))
        assert len(strategy.recommend(RecRequest("user-1"), 5).items) == 5
        assert len(strategy.recommend(RecRequest("new", current_item="item-002"), 5).items) == 5
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("implicit", "tensorflow")))
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
