"""The learned ranker: training on logged impressions, NumPy parity, serving contract,
artifacts, fallbacks and parameter errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import strategies.ranker  # noqa: F401  registers `ranker` (until the entry point is installed)
from abplatform.domain import Catalog, InteractionLog, RecRequest
from abplatform.errors import AbplatformError
from strategies.base import ScoringStrategy, stage_key
from strategies.pipeline import PipelineStrategy
from strategies.ranker.data import ImpressionLog
from strategies.ranker.strategy import RankerStrategy
from tests.factories import HISTORY_END, make_history

N_EXPOSURES = 1500
SLATE = 6


def impression_log(history: InteractionLog, seed: int = 0) -> ImpressionLog:
    """Seeded impressions after the history: clicks favour category cat-0 and top slots,
    purchases favour cheap items among the clicked."""
    rng = np.random.default_rng(seed)
    catalog = history.catalog
    users = np.unique(history.user_ids)
    n = N_EXPOSURES * SLATE
    items = np.concatenate(
        [rng.choice(len(catalog), size=SLATE, replace=False) for _ in range(N_EXPOSURES)]
    )
    positions = np.tile(np.arange(SLATE), N_EXPOSURES)
    favoured = catalog.categories[items] == "cat-0"
    p_click = 1 / (1 + np.exp(-(-2.0 + 2.0 * favoured - 0.3 * positions)))
    clicked = rng.random(n) < p_click
    cheap = catalog.prices[items] < 50
    purchased = clicked & (rng.random(n) < np.where(cheap, 0.6, 0.1))
    exposure_users = rng.choice(users, size=N_EXPOSURES)
    return ImpressionLog(
        exposure_ids=np.repeat(np.arange(1, N_EXPOSURES + 1), SLATE).astype(np.int64),
        positions=positions.astype(np.int64),
        item_ids=catalog.item_ids[items].astype(str),
        sources=np.full(n, "two_tower"),
        unit_ids=np.repeat(exposure_users, SLATE).astype(str),
        timestamps=np.repeat(HISTORY_END + 60 * np.arange(N_EXPOSURES), SLATE).astype(np.int64),
        scenes=np.repeat(rng.choice(["home", "pdp"], size=N_EXPOSURES), SLATE).astype(str),
        clicked=clicked,
        purchased=purchased,
    )


@pytest.fixture(scope="module")
def history() -> InteractionLog:
    return make_history(seed=3)


@pytest.fixture(scope="module")
def trained(history: InteractionLog) -> RankerStrategy:
    ranker = RankerStrategy({"epochs": 4, "objective": "purchase"}, seed=7)
    ranker.fit_impressions(history, impression_log(history))
    return ranker


def _requests() -> list[RecRequest]:
    return [
        RecRequest("user-1", scene="home"),
        RecRequest("user-2", scene="pdp"),
        RecRequest("stranger", scene="checkout"),
    ]


@pytest.mark.slow
def test_numpy_scores_equal_the_keras_model(trained: RankerStrategy) -> None:
    from strategies.ranker.model import keras_probabilities

    rng = np.random.default_rng(0)
    items = rng.integers(0, len(trained.catalog), size=200)
    x = np.vstack([trained.features_of(r, items) for r in _requests()])
    keras = keras_probabilities(trained.keras_model, x)
    ours = trained.artifact.weights
    assert ours is not None
    numpy = ours.probabilities(x)
    for head in ("click", "purchase"):
        np.testing.assert_allclose(numpy[head], keras[head], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_ranker_learns_the_logged_preference_and_reports_quality(
    trained: RankerStrategy,
) -> None:
    quality = trained.quality
    # The logged clicks depend on category and slot only: AUC well above chance on the
    # holdout (~1,800 rows, SE of an AUC about 0.015; 0.6 is 4+ SE below the ~0.72 the
    # generating model reaches) and the logistic peer is reported beside it.
    assert quality["ranker"]["click"].auc > 0.6
    assert quality["logistic"]["click"].auc > 0.6
    assert 0 <= quality["ranker"]["click"].ece < 1
    assert quality["ranker"]["click"].rows == int(0.2 * N_EXPOSURES) * SLATE
    scores = trained.score_items([RecRequest("user-1")], np.arange(len(trained.catalog))[None])
    favoured = trained.catalog.categories == "cat-0"
    assert scores[0][favoured].mean() > scores[0][~favoured].mean()


@pytest.mark.slow
def test_score_items_contract(trained: RankerStrategy) -> None:
    assert isinstance(trained, ScoringStrategy)
    rng = np.random.default_rng(1)
    items = rng.integers(0, len(trained.catalog), size=(3, 500))
    batch = trained.score_items(_requests(), items)
    assert batch.shape == (3, 500)
    singles = np.vstack(
        [trained.score_items([r], items[i : i + 1]) for i, r in enumerate(_requests())]
    )
    np.testing.assert_array_equal(batch, singles)
    np.testing.assert_array_equal(batch, trained.score_items(_requests(), items))
    assert np.all((batch >= 0) & (batch <= 1))
    slate = trained.recommend(RecRequest("user-1"), 5)
    assert len(set(slate.items)) == 5
    with pytest.raises(ValueError, match=r"items must be \(requests, n\)"):
        trained.score_items(_requests(), items[0])


@pytest.mark.slow
def test_export_and_load_serve_the_same_scores(
    trained: RankerStrategy, tmp_path: object, history: InteractionLog
) -> None:
    path = trained.export(str(tmp_path), experiment="exp", variant="ranked")
    loaded = RankerStrategy.from_artifact(path)
    items = np.random.default_rng(2).integers(0, len(history.catalog), size=(3, 50))
    np.testing.assert_array_equal(
        loaded.score_items(_requests(), items), trained.score_items(_requests(), items)
    )
    loaded.check_catalog(history.catalog)
    other = make_history(seed=3, n_items=61).catalog
    with pytest.raises(AbplatformError, match="trained on another catalogue"):
        loaded.check_catalog(other)


def test_objectives_combine_the_heads(history: InteractionLog, trained: RankerStrategy) -> None:
    items = np.arange(10)[None]
    request = [RecRequest("user-1")]
    weights = trained.artifact.weights
    assert weights is not None
    p = weights.probabilities(trained.features_of(request[0], items[0]))
    by_objective = {}
    for objective in ("click", "purchase", "revenue"):
        twin = RankerStrategy({"objective": objective})
        twin._use(trained.artifact)
        by_objective[objective] = twin.score_items(request, items)[0]
    np.testing.assert_allclose(by_objective["click"], p["click"], rtol=1e-12)
    np.testing.assert_allclose(by_objective["purchase"], p["click"] * p["purchase"], rtol=1e-12)
    prices = history.catalog.prices[:10]
    np.testing.assert_allclose(by_objective["revenue"], p["click"] * p["purchase"] * prices)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda log: None, "no logged impressions"),
        (lambda log: log, "fewer than min_impressions=100000"),
    ],
)
def test_too_few_impressions_fall_back_to_the_given_order(
    history: InteractionLog, make: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    ranker = RankerStrategy({"min_impressions": 100_000})
    ranker.fit_impressions(history, make(impression_log(history)))  # type: ignore[operator]
    assert ranker.fallback_reason is not None and reason in ranker.fallback_reason
    assert reason in caplog.text
    scores = ranker.score_items(_requests()[:2], np.array([[5, 3, 9], [1, 2, 0]]))
    assert np.all(np.diff(scores, axis=1) < 0)  # stable argsort keeps the merge order


def test_no_clicks_falls_back(history: InteractionLog) -> None:
    log = impression_log(history)
    silent = ImpressionLog(
        **{
            **log.__dict__,
            "clicked": np.zeros(len(log), bool),
            "purchased": np.zeros(len(log), bool),
        }
    )
    ranker = RankerStrategy()
    ranker.fit_impressions(history, silent)
    assert ranker.fallback_reason == "0 clicks in the logged impressions, fewer than min_clicks=20"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"objective": "margin"}, "objective"),
        ({"holdout": 1.0}, "holdout"),
        ({"hidden": []}, "hidden"),
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"heads": 3}, "heads"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RankerStrategy(params)
    assert field in str(info.value)


def test_unfitted_ranker_says_so() -> None:
    with pytest.raises(AbplatformError, match="not fitted"):
        RankerStrategy().score_items([RecRequest("u")], np.zeros((1, 2), np.int64))


def test_catalog_without_rows_is_refused() -> None:
    empty = InteractionLog(
        catalog=Catalog(np.array([], str), np.array([], str), np.array([], str), np.array([])),
        user_ids=np.array([], str),
        item_ids=np.array([], str),
        event_types=np.array([], str),
        values=np.array([]),
        timestamps=np.array([], np.int64),
    )
    with pytest.raises(AbplatformError, match="empty catalogue"):
        RankerStrategy().fit(empty)


@pytest.mark.slow
def test_the_exported_ranker_serves_without_tensorflow(
    trained: RankerStrategy, tmp_path: Path
) -> None:
    path = trained.export(str(tmp_path), experiment="exp", variant="ranked")
    expected = trained.score_items(_requests()[:1], np.arange(8)[None])[0]
    script = (
        "import sys, numpy as np\n"
        "from abplatform.domain import RecRequest\n"
        "from strategies.ranker.strategy import RankerStrategy\n"
        f"r = RankerStrategy.from_artifact({str(path)!r})\n"
        "s = r.score_items([RecRequest('user-1', scene='home')], np.arange(8)[None])[0]\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "print(' '.join(repr(float(x)) for x in s))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal([float(x) for x in out.stdout.split()], expected)


@pytest.mark.slow
def test_a_pipeline_refuses_a_ranker_of_another_catalogue(trained: RankerStrategy) -> None:
    params = {"objective": "purchase", "epochs": 4}
    pipeline = PipelineStrategy(
        {
            "retrieve": [{"kind": "popularity", "n": 10}],
            "rank": {"kind": "ranker", "params": params},
        }
    )
    pipeline.use_prefitted({stage_key("ranker", params): trained})
    with pytest.raises(AbplatformError, match="ranker was trained on another catalogue"):
        pipeline.fit(make_history(seed=3, n_items=61))
    pipeline.fit(make_history(seed=3))  # its own catalogue is fine
    assert pipeline.recommend(RecRequest("user-1"), 5).items


@pytest.mark.slow
def test_an_undefined_metric_is_null_in_the_artifact_and_the_report(
    history: InteractionLog, tmp_path: Path
) -> None:
    from strategies.ranker.report import ranker_quality

    log = impression_log(history)
    no_purchases = ImpressionLog(**{**log.__dict__, "purchased": np.zeros(len(log), bool)})
    ranker = RankerStrategy({"epochs": 1}, seed=1)
    ranker.fit_impressions(history, no_purchases)
    assert np.isnan(ranker.quality["ranker"]["purchase"].auc)  # one class only
    path = ranker.export(str(tmp_path), experiment="exp", variant="ranked")
    manifest = RankerStrategy.from_artifact(path).artifact.manifest
    assert manifest["training"]["quality"]["ranker"]["purchase"]["auc"] is None
    (quality,) = ranker_quality("ranked", ranker)
    assert quality.to_dict()["heads"]["logistic"]["purchase"]["auc"] is None


@pytest.mark.slow
def test_lightgbm_peer_is_scored_on_the_same_holdout(trained: RankerStrategy) -> None:
    pytest.importorskip("lightgbm")
    quality = trained.quality
    assert set(quality) == {"ranker", "logistic", "lightgbm"}
    for head in ("click", "purchase"):
        assert quality["lightgbm"][head].rows == quality["ranker"][head].rows
        assert quality["lightgbm"][head].positives == quality["ranker"][head].positives
    # Same bound as the ranker's: the logged clicks depend on category and slot only.
    assert quality["lightgbm"]["click"].auc > 0.6


def test_train_table_without_lightgbm_says_so_and_names_winning_peers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from abplatform.cli.offline import _print_rankers
    from strategies.ranker.metrics import HeadQuality
    from strategies.ranker.report import RankerQuality

    def heads(auc: float) -> dict[str, HeadQuality]:
        return {h: HeadQuality(100, 10, auc, 0.3, 0.01) for h in ("click", "purchase")}

    quality = RankerQuality(
        "ranked", None, 500, 100, {"ranker": heads(0.7), "logistic": heads(0.75)}
    )
    _print_rankers(SimpleNamespace(rankers=[quality]))  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "lightgbm not installed" in out
    assert (
        "logistic beats the ranker of ranked on the click head: holdout AUC 0.7500 against 0.7000"
        in out
    )
