"""Offline evaluation (`evaluate`): metric definitions, splits, seen items, cold users, CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose

from abplatform.config import ExperimentConfig, validate_config
from abplatform.domain import Catalog, InteractionLog
from abplatform.errors import AbplatformError
from strategies.offline import evaluate_offline
from strategies.splits import HeldOutLog, RandomSplit, TimeSplit, split_history

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "catalog"
DAY = 86_400
T0 = 1_714_521_600  # 2024-05-01T00:00:00Z


def _catalog(items: list[str]) -> Catalog:
    n = len(items)
    return Catalog(
        item_ids=np.array(items, dtype=str),
        categories=np.array(["c"] * n, dtype=str),
        brands=np.array(["b"] * n, dtype=str),
        prices=np.ones(n),
    )


def _log(catalog: Catalog, rows: list[tuple[str, str]], start: int = T0) -> InteractionLog:
    """Clicks in the given order, one second apart."""
    n = len(rows)
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array([u for u, _ in rows], dtype=str),
        item_ids=np.array([i for _, i in rows], dtype=str),
        event_types=np.array(["click"] * n, dtype=str),
        values=np.full(n, np.nan),
        timestamps=np.arange(start, start + n, dtype=np.int64),
    )


def _config(*strategies: tuple[str, str], catalog: str | None = None) -> ExperimentConfig:
    weight = 1.0 / len(strategies)
    document: dict[str, Any] = {
        "key": "offline",
        "variants": [
            {"key": key, "weight": weight, "strategy": {"kind": kind}} for key, kind in strategies
        ],
    }
    if catalog is not None:
        document["catalog"] = catalog
    return validate_config(document)


# A hand-checked case. Items a..f; training clicks give popularity counts
# a 5, b 4, c 3, d 2, e 1, f 0, so popularity ranks a b c d e f for everyone.
CATALOG = _catalog(["a", "b", "c", "d", "e", "f"])
TRAIN = _log(
    CATALOG,
    [
        *[("u1", "a"), ("u1", "b")],
        *[("u2", "a"), ("u2", "b"), ("u2", "c")],
        *[("u4", "a"), ("u4", "a"), ("u4", "b"), ("u4", "c"), ("u4", "d")],
        *[("u5", "a"), ("u5", "b"), ("u5", "c"), ("u5", "d"), ("u5", "e")],
    ],
)
# Held out: u1 {c, f}; u2 {a (seen in training), d}; u3 (cold: no training row) {b, e}.
HELD_OUT = _log(
    CATALOG,
    [("u1", "c"), ("u1", "f"), ("u2", "a"), ("u2", "d"), ("u3", "b"), ("u3", "e")],
    start=T0 + DAY,
)


def _hand_checked(include_seen: bool) -> dict[str, Any]:
    report = evaluate_offline(
        _config(("pop", "popularity")),
        TRAIN,
        split=HeldOutLog(HELD_OUT),
        ks=(1, 3),
        include_seen=include_seen,
        baselines=False,
    )
    return report.to_dict()


def test_metrics_match_hand_computed_values_with_seen_items_excluded() -> None:
    result = _hand_checked(include_seen=False)
    pop, split = result["variants"]["pop"], result["split"]
    # Seen items leave each slate: u1 gets c d e f, u2 d e f, u3 (cold) a b c d e f.
    # The pair (u2, a) was met in training, so it is dropped: 5 pairs of 3 users remain.
    assert (split["test_pairs"], split["test_users"], split["seen_pairs_dropped"]) == (5, 3, 1)
    assert (split["cold_users"], split["cold_pairs"]) == (1, 2)
    # @1: hits (u1, c) and (u2, d): hit = 2/5; recall = (1/2 + 1 + 0)/3;
    # ndcg = (1 + 1 + 0)/3; coverage = |{c, d, a}|/6.
    assert_allclose(pop["hit@1"], 2 / 5, rtol=1e-12)
    assert_allclose(pop["recall@1"], 0.5, rtol=1e-12)
    assert_allclose(pop["ndcg@1"], 2 / 3, rtol=1e-12)
    assert_allclose(pop["coverage@1"], 0.5, rtol=1e-12)
    # @3: u1 top c d e (c at 1), u2 d e f (d at 1), u3 a b c (b at 2).
    # hit = 3/5; recall = (1/2 + 1 + 1/2)/3 = 2/3;
    # ndcg: u1 1/(1 + 1/log2 3), u2 1, u3 (1/log2 3)/(1 + 1/log2 3): mean exactly 2/3;
    # coverage: {c, d, e, f, a, b} = 6/6. Cold pairs (u3, b), (u3, e): 1 of 2 hit.
    assert_allclose(pop["hit@3"], 3 / 5, rtol=1e-12)
    assert_allclose(pop["recall@3"], 2 / 3, rtol=1e-12)
    assert_allclose(pop["ndcg@3"], 2 / 3, rtol=1e-12)
    assert_allclose(pop["coverage@3"], 1.0, rtol=1e-12)
    assert_allclose(pop["cold_hit@3"], 1 / 2, rtol=1e-12)
    assert_allclose(pop["cold_hit@1"], 0.0, atol=0)


def test_include_seen_keeps_seen_items_and_pairs() -> None:
    result = _hand_checked(include_seen=True)
    pop, split = result["variants"]["pop"], result["split"]
    # Everyone gets a b c d e f; all 6 pairs count, (u2, a) included.
    assert (split["test_pairs"], split["seen_pairs_dropped"]) == (6, 0)
    # @1: only (u2, a) hits: hit = 1/6; recall = (0 + 1/2 + 0)/3; ndcg = (0 + 1 + 0)/3;
    # coverage = |{a}|/6.
    assert_allclose(pop["hit@1"], 1 / 6, rtol=1e-12)
    assert_allclose(pop["recall@1"], 1 / 6, rtol=1e-12)
    assert_allclose(pop["ndcg@1"], 1 / 3, rtol=1e-12)
    assert_allclose(pop["coverage@1"], 1 / 6, rtol=1e-12)
    # @3 (a b c): u1 c at 3, u2 a at 1, u3 b at 2: hit = 3/6, recall = 1/2;
    # ndcg = mean(0.5, 1, 1/log2 3) / (1 + 1/log2 3); coverage = 3/6.
    idcg = 1 + 1 / np.log2(3)
    assert_allclose(pop["hit@3"], 0.5, rtol=1e-12)
    assert_allclose(pop["recall@3"], 0.5, rtol=1e-12)
    assert_allclose(pop["ndcg@3"], (0.5 + 1 + 1 / np.log2(3)) / idcg / 3, rtol=1e-12)
    assert_allclose(pop["coverage@3"], 0.5, rtol=1e-12)


def test_report_json_shape() -> None:
    report = evaluate_offline(
        _config(("pop", "popularity"), ("rand", "random")),
        TRAIN,
        split=HeldOutLog(HELD_OUT),
        ks=(10, 2),
    )
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert doc["ks"] == [2, 10]
    assert list(doc["variants"]) == ["pop", "rand", "baseline:popularity", "baseline:random"]
    for values in doc["variants"].values():
        for k in (2, 10):
            for metric in ("hit", "recall", "ndcg", "coverage"):
                assert 0.0 <= values[f"{metric}@{k}"] <= 1.0
        assert values["fit_seconds"] >= 0 and values["serve_seconds"] >= 0
    assert doc["variants"]["rand"]["kind"] == "random"
    assert doc["variants"]["baseline:random"]["role"] == "baseline"
    assert doc["split"]["kind"] == "log"
    assert {"train_interactions", "test_interactions", "cold_users"} <= set(doc["split"])
    # K beyond the catalogue's 6 items: every list holds the whole (unseen) catalogue.
    assert doc["variants"]["pop"]["recall@10"] == 1.0


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


def _random_history(seed: int = 3, users: int = 200, items: int = 50) -> InteractionLog:
    rng = np.random.default_rng(seed)
    n = 3000
    catalog = _catalog([f"i{j}" for j in range(items)])
    who = [f"u{u}" for u in rng.integers(0, users, n).tolist()]
    for row in range(int(0.85 * n), n, 3):  # late rows of users never seen before
        who[row] = f"new{row % 40}"
    rows = list(zip(who, [f"i{i}" for i in (rng.zipf(1.5, n) % items).tolist()], strict=True))
    log = _log(catalog, rows)
    return InteractionLog(
        catalog=log.catalog,
        user_ids=log.user_ids,
        item_ids=log.item_ids,
        event_types=log.event_types,
        values=log.values,
        timestamps=T0 + np.sort(rng.choice(30 * DAY, n, replace=False)),
    )


def test_random_split_holds_out_whole_pairs_reproducibly() -> None:
    history = _random_history()
    parts = split_history(history, RandomSplit(0.2, seed=7))
    train, test = parts.train, parts.test
    pairs = set(zip(history.user_ids.tolist(), history.item_ids.tolist(), strict=True))
    test_pairs = set(zip(test.user_ids.tolist(), test.item_ids.tolist(), strict=True))
    train_pairs = set(zip(train.user_ids.tolist(), train.item_ids.tolist(), strict=True))
    assert not test_pairs & train_pairs
    assert len(test_pairs) == round(0.2 * len(pairs))
    assert len(train) + len(test) == len(history)
    assert parts.to_dict() == {
        "kind": "random",
        "test_fraction": 0.2,
        "seed": 7,
        "train_interactions": len(train),
        "test_interactions": len(test),
    }
    again = split_history(history, RandomSplit(0.2, seed=7)).test
    assert again.user_ids.tolist() == test.user_ids.tolist()
    other = split_history(history, RandomSplit(0.2, seed=8)).test
    assert other.user_ids.tolist() != test.user_ids.tolist()


def test_time_split_holds_out_everything_from_the_cutoff_and_counts_cold_users() -> None:
    history = _random_history()
    parts = split_history(history, TimeSplit(0.25))
    train, test = parts.train, parts.test
    assert train.timestamps.max() < test.timestamps.min()
    assert len(test) == round(0.25 * len(history))  # distinct-enough timestamps: no ties
    report = evaluate_offline(
        _config(("pop", "popularity")), history, split=TimeSplit(0.25), baselines=False
    ).to_dict()
    late_users = set(test.user_ids.tolist()) - set(train.user_ids.tolist())
    assert report["split"]["cold_users"] == len(late_users) > 0
    assert report["split"]["kind"] == "time"
    assert report["variants"]["pop"]["users"] == report["split"]["test_users"]


def test_a_split_that_leaves_no_training_data_is_an_error() -> None:
    same_time = _log(CATALOG, [("u1", "a"), ("u2", "b")])
    flat = InteractionLog(
        catalog=same_time.catalog,
        user_ids=same_time.user_ids,
        item_ids=same_time.item_ids,
        event_types=same_time.event_types,
        values=same_time.values,
        timestamps=np.full(2, T0, dtype=np.int64),
    )
    with pytest.raises(AbplatformError, match="leaves no training data"):
        split_history(flat, TimeSplit(0.5))


# ---------------------------------------------------------------------------
# The command line, round trip on a small catalogue (SQLite and PostgreSQL)
# ---------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ABPLATFORM_DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "abplatform.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def _small_shop(folder: Path, seed: int = 11) -> tuple[Path, Path, Path]:
    """40 items in 4 categories, 60 users who each click mostly in their favourite one."""
    rng = np.random.default_rng(seed)
    items, interactions, config = (
        folder / "items.csv",
        folder / "interactions.csv",
        folder / "shop.yaml",
    )
    with items.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "category", "price", "tags"])
        for j in range(40):
            writer.writerow([f"i{j}", f"c{j % 4}", 5 + j, f"t{j % 3}|t{j % 5}"])
    with interactions.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "timestamp", "type"])
        for u in range(60):
            favourite = u % 4
            for step in range(8):
                category = favourite if rng.random() < 0.8 else int(rng.integers(0, 4))
                item = 4 * int(min(rng.zipf(1.6), 10) - 1) + category
                kind = "purchase" if rng.random() < 0.1 else "click"
                writer.writerow([f"u{u}", f"i{item}", T0 + u * 1000 + step * 60, kind])
    config.write_text(
        "key: small-shop\ncatalog: small\nvariants:\n"
        "  - {key: control, weight: 0.5, strategy: {kind: popularity}}\n"
        "  - {key: per_category, weight: 0.5, strategy: {kind: popularity, "
        "params: {per_category: true}}}\n",
        encoding="utf-8",
    )
    return items, interactions, config


def test_round_trip_ingest_train_evaluate(db_url: str, tmp_path: Path) -> None:
    items, interactions, config = _small_shop(tmp_path)
    out = cli(
        "ingest", str(config), "--items", str(items), "--interactions", str(interactions),
        "--db", db_url,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "catalogue 'small': 40 new items" in out.stdout
    assert "480 new interactions" in out.stdout

    out = cli("train", str(config), "--db", db_url, "--artifacts", str(tmp_path / "a"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["catalog"] == "small"

    out = cli("evaluate", str(config), "--db", db_url, "--json", "--k", "5,10")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert list(doc["variants"]) == [
        "control",
        "per_category",
        "baseline:popularity",
        "baseline:random",
    ]
    assert doc["split"]["kind"] == "random" and doc["split"]["seed"] == 42
    assert doc["split"]["train_interactions"] + doc["split"]["test_interactions"] == 480
    scores = {key: values["hit@10"] for key, values in doc["variants"].items()}
    # Users click mostly in one category: knowing it beats global popularity, which beats
    # random (hit@10 pools about 90 held-out pairs, so these gaps are several SEs wide).
    assert scores["per_category"] > scores["control"] > scores["baseline:random"]

    out = cli("evaluate", str(config), "--db", db_url, "--split", "time", "--k", "10")
    assert out.returncode == 0, out.stderr
    assert "hit@10" in out.stdout and "per_category" in out.stdout
    assert "cold, served by each strategy's cold-start path" in out.stdout


@pytest.mark.slow
def test_evaluate_fits_a_two_tower_variant(tmp_path: Path) -> None:
    items, interactions, config = _small_shop(tmp_path)
    config.write_text(
        "key: small-shop\ncatalog: small\nvariants:\n"
        "  - {key: control, weight: 0.5, strategy: {kind: popularity}}\n"
        "  - {key: two_tower, weight: 0.5, strategy: {kind: two_tower, params: {epochs: 2}}}\n",
        encoding="utf-8",
    )
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    out = cli(
        "ingest", str(config), "--items", str(items), "--interactions", str(interactions),
        "--db", db,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = cli("evaluate", str(config), "--db", db, "--json", "--k", "10", "--no-baselines")
    assert out.returncode == 0, out.stderr
    two_tower = json.loads(out.stdout)["variants"]["two_tower"]
    assert two_tower["kind"] == "two_tower" and two_tower["fit_seconds"] > 0
    assert 0.0 <= two_tower["hit@10"] <= 1.0 and 0.0 < two_tower["coverage@10"] <= 1.0


def test_evaluate_with_a_test_file(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    config = DATA / "shop.yaml"
    out = cli(
        "ingest", str(config), "--items", str(DATA / "items.csv"),
        "--interactions", str(DATA / "interactions.csv"), "--db", db,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr

    out = cli("evaluate", str(config), "--db", db, "--test", str(DATA / "test_interactions.csv"),
              "--json", "--k", "1,6")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    # Held out: (u1, i4) and (u9, i6); u9 has no history: a cold user.
    assert doc["split"]["kind"] == "file"
    assert (doc["split"]["train_interactions"], doc["split"]["test_interactions"]) == (7, 2)
    assert (doc["split"]["test_users"], doc["split"]["cold_users"]) == (2, 1)
    # K = 6 is the whole catalogue: every unseen held-out item is in every top-K.
    assert doc["variants"]["control"]["hit@6"] == 1.0
    assert doc["include_seen"] is False

    out = cli("evaluate", str(config), "--db", db, "--test", str(DATA / "test_interactions.csv"),
              "--json", "--k", "6", "--include-seen")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["include_seen"] is True

    out = cli("evaluate", str(config), "--db", db, "--test",
              str(DATA / "test_interactions_bad.csv"))  # fmt: skip
    assert out.returncode == 2
    assert "test_interactions_bad.csv line 3: item_id: unknown item" in out.stderr
    assert "test_interactions_bad.csv line 4: timestamp" in out.stderr


def test_evaluate_usage_errors(tmp_path: Path) -> None:
    config = str(DATA / "shop.yaml")
    db = f"sqlite:///{tmp_path / 'x.db'}"
    out = cli("evaluate", config, "--db", db, "--split", "sideways")
    assert out.returncode == 2 and "unknown --split 'sideways'" in out.stderr
    out = cli("evaluate", config, "--db", db, "--k", "ten")
    assert out.returncode == 2 and "--k must be whole numbers" in out.stderr
    out = cli("evaluate", config, "--db", db, "--test-fraction", "1.5")
    assert out.returncode == 2 and "--test-fraction must be in (0, 1)" in out.stderr
    out = cli("evaluate", config, "--db", db)  # nothing ingested
    assert out.returncode == 2 and "catalogue 'tiny-shop' has no items" in out.stderr


def test_train_says_why_a_ratings_only_history_cannot_be_learned(tmp_path: Path) -> None:
    from abplatform.catalog_ingest import ingest_catalog
    from abplatform.storage.db import open_database
    from strategies.training import train_experiment

    ratings = tmp_path / "ratings.csv"
    ratings.write_text(
        "user_id,item_id,timestamp,type,value\n"
        + "".join(
            f"u{u},i{i},{T0 + 60 * (3 * u + i)},rating,4\n" for u in range(3) for i in (1, 2)
        ),
        encoding="utf-8",
    )
    engine = open_database(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        ingest_catalog(engine, "films", items=DATA / "items.csv", interactions=ratings)
        with pytest.raises(AbplatformError, match="has no click or purchase interactions") as e:
            train_experiment(
                engine, _config(("pop", "popularity")), "films", artifacts_dir=tmp_path / "a"
            )
        assert "(its history has only: rating)" in e.value.message
    finally:
        engine.dispose()
