"""Offline quality on MovieLens 100K: two-tower, ALS, EASE, popularity, random, via our storage.

The data comes from an installed package, never from the network at run time: RecBole's
wheel ships ML-100K under ``recbole/dataset_example/ml-100k`` (ratings with timestamps,
movie genres, user age, gender and occupation). RecBole itself needs torch and ray, which
we do not use, so install it without dependencies (its files are only read, never imported):

    .venv/bin/pip install --no-deps recbole==1.2.1

MovieLens' licence forbids redistribution: nothing of it is committed here. The bench
ingests the movies (genres as ``tags``), the users (profile features) and the ratings (each
rating is an implicit positive, type ``click`` with the rating as ``value``, as the TFRS
tutorial treats them; with ``--as-ratings`` type ``rating``, which ALS and EASE learn from
through ``positive_events: [rating]`` and ``--min-rating``) into a temporary SQLite
database with the project's storage, reads the history back with `load_history`, splits
it, fits every strategy on the training part and scores the top K of every held-out user.

Splits (both printed): ``random``, the TFRS tutorial's 80/20 random split of the ratings,
and ``time``, a global temporal split (the last 20% of ratings by time are held out; users
first seen after the cut are cold users, served by each strategy's cold-start path). The
metrics are computed twice: with the items a user rated in training excluded from their
top K (our default) and with them kept (``include seen``, the TFRS tutorial's protocol).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from abplatform.catalog_ingest import ingest_catalog
from abplatform.domain import InteractionLog
from abplatform.storage.catalog import load_history
from abplatform.storage.db import open_database
from strategies.als import AlsStrategy
from strategies.ease import EaseStrategy
from strategies.offline import held_out, held_out_targets, score_strategy
from strategies.popularity import PopularityStrategy
from strategies.random_items import RandomStrategy
from strategies.splits import RandomSplit, TimeSplit, split_history
from strategies.two_tower import TwoTowerStrategy

PACKAGE = "recbole"
DATA_DIR = "recbole/dataset_example/ml-100k"
CATALOG = "ml-100k"
AGE_BANDS = ((18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"))

TWO_TOWER_PARAMS: dict[str, Any] = {}
"""The two-tower as benchmarked: its defaults (issue 15; see bench/README.md for how they were
chosen with `--validate`, and for the settings of earlier rounds)."""

SPLIT_PARAMS: dict[str, dict[str, Any]] = {"random": {}, "time": {}}
"""Per-split overrides of the defaults (none since issue 15: one set of defaults for both)."""


ALS_PARAMS: dict[str, Any] = {}
"""ALS as benchmarked: its defaults (factors 48, regularization 30, alpha 2), chosen with
`--validate` on the random split (see bench/README.md)."""

EASE_PARAMS: dict[str, Any] = {}
"""EASE as benchmarked: its default lambda (400), chosen with `--validate` on the random split."""


@dataclass(frozen=True)
class MovieLens:
    """ML-100K as parsed columns."""

    item_ids: list[str]
    titles: list[str]
    genres: list[str]  # "|"-joined
    user_ids: list[str]
    profiles: list[dict[str, str]]
    rating_users: list[str]
    rating_items: list[str]
    ratings: list[float]
    timestamps: npt.NDArray[np.int64]


def dataset_dir() -> Path:
    """Where the installed package keeps ML-100K (found without importing the package)."""
    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        raise SystemExit(
            f"{PACKAGE} is not installed; install its data (not its torch/ray dependencies): "
            f".venv/bin/pip install --no-deps {PACKAGE}==1.2.1"
        ) from None
    path = Path(str(dist.locate_file(DATA_DIR)))
    if not (path / "ml-100k.inter").is_file():
        raise SystemExit(f"{path}/ml-100k.inter is missing from {PACKAGE} {dist.version}")
    return path


def _rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        next(handle)  # RecBole's typed header (name:type)
        return [line.rstrip("\n").split("\t") for line in handle if line.strip()]


def age_band(age: str) -> str:
    """MovieLens 1M's age bands for a raw age."""
    years = int(age)
    for upper, band in AGE_BANDS:
        if years < upper:
            return band
    return "50-55" if years < 56 else "56+"


def read_movielens(path: Path) -> MovieLens:
    """Parse the ratings, the movies (title, genres) and the users (age, gender, occupation)."""
    items = _rows(path / "ml-100k.item")
    users = _rows(path / "ml-100k.user")
    inter = _rows(path / "ml-100k.inter")
    return MovieLens(
        item_ids=[r[0] for r in items],
        titles=[r[1] for r in items],
        genres=["|".join(r[3].split()) for r in items],
        user_ids=[r[0] for r in users],
        profiles=[{"age_band": age_band(r[1]), "gender": r[2], "occupation": r[3]} for r in users],
        rating_users=[r[0] for r in inter],
        rating_items=[r[1] for r in inter],
        ratings=[float(r[2]) for r in inter],
        timestamps=np.array([int(float(r[3])) for r in inter], dtype=np.int64),
    )


def write_csvs(data: MovieLens, folder: Path, event_type: str = "click") -> dict[str, Path]:
    """The dataset as the three CSV files `abplatform ingest` reads (ratings as `event_type`)."""
    files = {name: folder / f"{name}.csv" for name in ("items", "users", "interactions")}
    with files["items"].open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["item_id", "title", "tags"])
        out.writerows(zip(data.item_ids, data.titles, data.genres, strict=True))
    with files["users"].open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["user_id", "age_band", "gender", "occupation"])
        for user, profile in zip(data.user_ids, data.profiles, strict=True):
            out.writerow([user, profile["age_band"], profile["gender"], profile["occupation"]])
    with files["interactions"].open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["user_id", "item_id", "timestamp", "type", "value"])
        out.writerows(
            zip(
                data.rating_users,
                data.rating_items,
                data.timestamps.tolist(),
                [event_type] * len(data.ratings),
                data.ratings,
                strict=True,
            )
        )
    return files


def ingest(folder: Path, data: MovieLens, event_type: str = "click") -> InteractionLog:
    """Ingest the CSVs as `abplatform ingest` does into a fresh SQLite file; read it back."""
    files = write_csvs(data, folder, event_type)
    engine = open_database(f"sqlite:///{folder}/bench.db")
    ingest_catalog(
        engine,
        CATALOG,
        items=files["items"],
        users=files["users"],
        interactions=files["interactions"],
    )
    with engine.connect() as conn:
        history = load_history(conn, CATALOG)
    engine.dispose()
    return history


def strategies_to_compare(
    quick: bool,
    seed: int,
    overrides: dict[str, Any],
    kind: str,
    als: dict[str, Any] | None = None,
    ease: dict[str, Any] | None = None,
) -> dict[str, Callable[[], Any]]:
    """Fresh, unfitted strategies by variant name, the two-tower set up for split `kind`."""
    params = {**TWO_TOWER_PARAMS, **SPLIT_PARAMS[kind]}
    if quick:
        params.update(epochs=4, early_stopping_patience=1)
    params.update(overrides)
    als_params = {**ALS_PARAMS, **(als or {})}
    ease_params = {**EASE_PARAMS, **(ease or {})}
    return {
        "two_tower": lambda: TwoTowerStrategy(params, seed=seed),
        "als": lambda: AlsStrategy(als_params, seed=seed),
        "ease": lambda: EaseStrategy(ease_params, seed=seed),
        # Popularity over the whole training history (ML-100K spans seven months).
        "popularity": lambda: PopularityStrategy({"window_days": 3650}, seed=seed),
        "random": lambda: RandomStrategy({}, seed=seed),
    }


def print_table(title: str, rows: dict[str, dict[str, float]], ks: Sequence[int]) -> None:
    """A fixed-width table of one split and protocol."""
    columns = [
        *(f"hit@{k}" for k in ks),
        *(f"recall@{k}" for k in ks),
        f"ndcg@{min(ks)}",
        f"coverage@{max(ks)}",
    ]
    print(f"\n{title}")
    header = f"{'variant':<12}" + "".join(f"{c:>13}" for c in columns)
    print(header + f"{'fit s':>10}{'serve s':>10}")
    for name, metrics in rows.items():
        cells = "".join(f"{metrics[c]:>13.4f}" for c in columns)
        print(f"{name:<12}{cells}{metrics['fit_seconds']:>10.1f}{metrics['serve_seconds']:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["random", "time", "both"], default="both")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--k", default="10,50,100")
    parser.add_argument("--quick", action="store_true", help="fewer two-tower epochs")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--params", default="{}", help="JSON overriding two-tower params")
    parser.add_argument(
        "--as-ratings",
        action="store_true",
        help="ingest the ratings as type `rating` (not `click`): ALS and EASE then learn from "
        "them through positive_events [rating] (and --min-rating); the other strategies "
        "learn nothing from such rows",
    )
    parser.add_argument("--min-rating", type=float, help="ALS's and EASE's min_rating")
    parser.add_argument("--als", default="{}", help="JSON overriding ALS params")
    parser.add_argument("--ease", default="{}", help="JSON overriding EASE params")
    parser.add_argument("--only", default="", help="comma-separated variants to run")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="tuning mode: split the training part again the same way and score on that "
        "(the test part is never read)",
    )
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.k.split(",")})

    path = dataset_dir()
    print(f"dataset: MovieLens 100K from {PACKAGE} {distribution(PACKAGE).version} ({path})")
    clock = time.perf_counter()
    data = read_movielens(path)
    with tempfile.TemporaryDirectory() as tmp:
        log = ingest(Path(tmp), data, "rating" if args.as_ratings else "click")
    print(
        f"written as CSV, ingested into SQLite and read back in "
        f"{time.perf_counter() - clock:.1f} s: "
        f"{len(log):,} ratings, {np.unique(log.user_ids).size:,} users with profiles "
        f"(age band, gender, occupation), {len(log.catalog):,} movies with genre tags"
    )
    splits = ["random", "time"] if args.split == "both" else [args.split]
    results: dict[str, Any] = {}
    for kind in splits:
        split = (
            RandomSplit(args.test_fraction, seed=args.seed)
            if kind == "random"
            else TimeSplit(args.test_fraction)
        )
        parts = split_history(log, split, CATALOG)
        if args.validate:
            # Parameters are chosen here: a split of the training data only.
            parts = split_history(parts.train, split, CATALOG)
        train, held = parts.train, parts.test
        protocols = {
            "exclude seen": held_out_targets(train, held, include_seen=False),
            "include seen": held_out_targets(train, held, include_seen=True),
        }
        details = held_out(parts, protocols["exclude seen"]).to_dict()
        if args.validate:
            details["validation"] = True
        print(f"\nsplit: {json.dumps(details)}")
        tables: dict[str, dict[str, dict[str, float]]] = {name: {} for name in protocols}
        positives: dict[str, Any] = {}
        if args.as_ratings:
            positives["positive_events"] = ["rating"]
        if args.min_rating is not None:
            positives["min_rating"] = args.min_rating
        variants = strategies_to_compare(
            args.quick,
            args.seed,
            json.loads(args.params),
            kind,
            {**positives, **json.loads(args.als)},
            {**positives, **json.loads(args.ease)},
        )
        for name, build in variants.items():
            if args.only and name not in args.only.split(","):
                continue
            strategy = build()
            clock = time.perf_counter()
            strategy.fit(train)
            fit_seconds = time.perf_counter() - clock
            if name == "two_tower":
                record = strategy.artifact.manifest["training"]
                curve = [
                    round(e.get("val_recall@50", e.get("val_hit@50", 0.0)), 4)
                    for e in record.get("epochs", [])
                ]
                metric = "hit@50" if strategy.params.validation_holdout != "last" else "recall@50"
                refit = record.get("refit_epochs")
                print(
                    f"two_tower: {record.get('epochs_run')} epochs, best "
                    f"{record.get('best_epoch')}, validation {metric} by epoch {curve}"
                    + (f"; refit on the whole training part for {refit} epochs" if refit else "")
                )
            for protocol, targets in protocols.items():
                metrics, serve = score_strategy(
                    strategy, train, targets, ks, include_seen=protocol == "include seen"
                )
                metrics.update(fit_seconds=fit_seconds, serve_seconds=serve)
                tables[protocol][name] = metrics
        for protocol, rows in tables.items():
            print_table(f"[{kind} split, {protocol}]", rows, ks)
        results[kind] = {"split": details, **tables}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
