"""The two-tower strategy: TFRS parity, cold users, fallbacks, artifacts served without TF."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose
from pydantic import ValidationError

from abplatform.config.models import SimulationConfig, WorldConfig
from abplatform.domain import InteractionLog, RecRequest
from abplatform.registry import build_strategy
from strategies.evaluation import evaluate, time_split
from strategies.two_tower import TwoTowerStrategy
from strategies.two_tower.artifact import ArtifactError, load_artifact
from strategies.two_tower.data import UserFeatureEncoder, positive_sequences, user_inputs
from tests.factories import LEGACY_TWO_TOWER, make_history

ROOT = Path(__file__).resolve().parents[2]
PARAMS: dict[str, Any] = {
    **LEGACY_TWO_TOWER,
    "embedding_dim": 8,
    "hidden_units": [16],
    "epochs": 3,
    "batch_size": 128,
    "history_length": 5,
    "exclude_purchased": False,
}
SEED = 11


def run_python(code: str) -> str:
    """Run `code` in a fresh interpreter (so sys.modules starts empty); return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def known_inputs(strategy: TwoTowerStrategy, log: InteractionLog) -> Any:
    """The user-tower inputs the strategy embedded its known users from."""
    artifact = strategy.artifact
    sequences = positive_sequences(log, strategy.params.purchase_weight)
    return user_inputs(
        sequences,
        artifact.user_ids,
        UserFeatureEncoder(),
        log.user_features,
        strategy.params.history_length,
    )


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return make_history(n_events=1500)


@pytest.fixture(scope="module")
def fitted(log: InteractionLog) -> TwoTowerStrategy:
    strategy = build_strategy("two_tower", PARAMS, seed=SEED)
    assert isinstance(strategy, TwoTowerStrategy)
    strategy.fit(log)
    return strategy


def test_importing_and_configuring_does_not_load_tensorflow() -> None:
    out = run_python(
        """
        import sys
        import abplatform
        import strategies.two_tower
        from typer.testing import CliRunner
        from abplatform.cli import app
        from abplatform.config import load_experiment
        from abplatform.registry import build_strategy, strategies as registry

        assert CliRunner().invoke(app, ["--help"]).exit_code == 0
        assert "two_tower" in registry.names()
        load_experiment("examples/homepage_two_tower.yaml")
        build_strategy("two_tower", {"embedding_dim": 8})
        heavy = ("tensorflow", "keras", "tf_keras")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    assert out.strip() == "[]"


class TestParams:
    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("embedding_dim", 0, "greater than or equal to 2"),
            ("epochs", 0, "greater than or equal to 1"),
            ("batch_size", 1, "greater than or equal to 2"),
            ("learning_rate", 0.0, "greater than 0"),
            ("learning_rate", float("nan"), "finite number"),
            ("history_length", -1, "greater than or equal to 0"),
            ("temperature", 0, "greater than 0"),
            ("l2", -0.1, "greater than or equal to 0"),
            ("exclude_purchased", "perhaps", "valid boolean"),
            ("early_stopping_patience", -1, "greater than or equal to 0"),
            ("validation_fraction", 1.0, "less than 1"),
            ("purchase_weight", 0, "greater than 0"),
            ("user_id_dropout", 1.0, "less than 1"),
            ("cold_start_dropout", -0.1, "greater than or equal to 0"),
            ("cold_start_dropout", 1.0, "less than 1"),
            ("item_bias", "perhaps", "valid boolean"),
            ("hidden_units", [16, 0], "greater than or equal to 1"),
            ("example_history", "after", "'before' or 'others'"),
            ("history_dropout", -0.1, "greater than or equal to 0"),
            ("history_dropout", 1.0, "less than 1"),
            ("history_embeddings", "separate", "'shared' or 'own'"),
        ],
    )
    def test_bad_value_names_the_field(self, field: str, value: Any, message: str) -> None:
        with pytest.raises(ValidationError) as info:
            build_strategy("two_tower", {field: value})
        error = info.value.errors()[0]
        assert error["loc"][0] == field
        assert message in str(info.value)

    def test_unknown_field(self) -> None:
        with pytest.raises(ValidationError, match="embeding_dim"):
            build_strategy("two_tower", {"embeding_dim": 8})

    def test_config_error_points_at_the_variant(self) -> None:
        from abplatform.config import ConfigError, load_experiment_text

        text = (ROOT / "examples" / "homepage_two_tower.yaml").read_text()
        text = text.replace("temperature: 0.1", "temperature: -1")
        with pytest.raises(ConfigError) as info:
            load_experiment_text(text)
        assert info.value.problems == [
            "variants.1.strategy.params.temperature: input should be greater than 0 (got -1)"
        ]


class TestServing:
    def test_numpy_top_k_equals_tfrs_brute_force(
        self, fitted: TwoTowerStrategy, log: InteractionLog
    ) -> None:
        from strategies.two_tower.model import brute_force_top_k

        inputs = known_inputs(fitted, log)
        expected = brute_force_top_k(fitted.towers, inputs, 10)
        slates = fitted.recommend_batch([RecRequest(u) for u in inputs.user_ids.tolist()], 10)
        index = log.catalog.index()
        got = np.array([[index[i] for i in s.items] for s in slates])
        # Scores of the unquantised TF embeddings: a disagreement is allowed only between
        # items whose scores tie to float32 precision (quantisation moves them by < 1e-6).
        queries = fitted.towers.user_embeddings(inputs)
        scores = queries @ fitted.towers.item_embeddings().T
        for row in range(len(inputs)):
            for a, b in zip(got[row], expected[row], strict=True):
                if a != b:
                    assert abs(scores[row, a] - scores[row, b]) < 1e-5
        assert (got == expected).mean() > 0.95

    def test_stored_user_embeddings_are_the_tower_outputs(
        self, fitted: TwoTowerStrategy, log: InteractionLog
    ) -> None:
        inputs = known_inputs(fitted, log)
        stored = fitted.artifact.user_embeddings[:, :-1]
        assert_allclose(stored, fitted.towers.user_embeddings(inputs), atol=2e-6)
        assert (fitted.artifact.user_embeddings[:, -1] == 0).all()  # the popularity axis

    def test_numpy_tower_equals_tf_tower_for_an_unseen_user(self, fitted: TwoTowerStrategy) -> None:
        from strategies.two_tower.data import UserInputs

        history = ["item-003", "item-010", "item-007"]
        numpy_query = fitted.embed_history(history)
        index = fitted.catalog.index()
        tokens = np.zeros((1, PARAMS["history_length"]), dtype=np.int32)
        tokens[0, :3] = [index[i] + 1 for i in history]
        inputs = UserInputs(
            np.array(["never-seen"]),
            tokens,
            np.zeros((1, 0), dtype=np.int32),
            np.zeros((1, 0), dtype=np.float32),
        )
        assert_allclose(numpy_query, fitted.towers.user_embeddings(inputs), atol=1e-5)
        # A known user's id row is used when asked for.
        known = fitted.artifact.user_ids[0]
        assert not np.allclose(fitted.embed_history(history, user_id=known), numpy_query)

    def test_contract_behaviour(self, fitted: TwoTowerStrategy, log: InteractionLog) -> None:
        catalog = set(log.catalog.item_ids.tolist())
        requests = [
            RecRequest("user-1"),
            RecRequest("user-2", scene="product_detail", current_item="item-004"),
            RecRequest("never-seen"),
            RecRequest("cold-with-context", current_item="item-005", cart_items=("item-009",)),
        ]
        batch = fitted.recommend_batch(requests, 10)
        assert batch == [fitted.recommend(r, 10) for r in requests]
        assert batch == fitted.recommend_batch(requests, 10)
        for slate in batch:
            assert len(set(slate.items)) == 10 and set(slate.items) <= catalog
            assert all(np.isfinite(slate.scores))
            assert list(slate.scores) == sorted(slate.scores, reverse=True)

    def test_unseen_user_without_context_gets_the_popularity_ranking(
        self, fitted: TwoTowerStrategy, log: InteractionLog
    ) -> None:
        sequences = positive_sequences(log, fitted.params.purchase_weight)
        counts = np.bincount(sequences.items, weights=sequences.weights, minlength=len(log.catalog))
        slate = fitted.recommend(RecRequest("never-seen"), 15)
        index = log.catalog.index()
        ranked = counts[[index[i] for i in slate.items]]
        assert ranked[0] == counts.max()
        assert (np.diff(ranked) <= 0).all()
        assert fitted.recommend(RecRequest("someone-else"), 15) == slate

    def test_unseen_user_with_context_is_embedded_from_it(self, fitted: TwoTowerStrategy) -> None:
        default = fitted.recommend(RecRequest("never-seen"), 10)
        with_context = fitted.recommend(RecRequest("never-seen", current_item="item-030"), 10)
        assert with_context != default
        # Unknown context items are ignored.
        assert (
            fitted.recommend(RecRequest("never-seen", current_item="no-such-item"), 10) == default
        )

    def test_excludes_purchased_items(self, log: InteractionLog, fitted: TwoTowerStrategy) -> None:
        strategy = TwoTowerStrategy({**PARAMS, "exclude_purchased": True}, seed=SEED)
        strategy.fit(log)
        bought = log.event_types == "purchase"
        user = "user-3"
        purchased = set(log.item_ids[bought & (log.user_ids == user)].tolist())
        assert purchased
        slate = strategy.recommend(RecRequest(user), 10)
        assert not purchased & set(slate.items)
        # With k = the whole catalogue, purchased items come last, with their true scores.
        everything = strategy.recommend(RecRequest(user), len(log.catalog))
        assert set(everything.items[-len(purchased) :]) == purchased
        assert all(-1.01 <= s <= 1.01 for s in everything.scores)

    def test_fit_is_deterministic_under_a_seed(
        self, fitted: TwoTowerStrategy, log: InteractionLog
    ) -> None:
        again = TwoTowerStrategy(PARAMS, seed=SEED)
        again.fit(log)
        assert np.array_equal(again.artifact.item_embeddings, fitted.artifact.item_embeddings)
        assert np.array_equal(again.artifact.user_embeddings, fitted.artifact.user_embeddings)

    def test_training_record(self, fitted: TwoTowerStrategy) -> None:
        training = fitted.artifact.manifest["training"]
        assert training["fallback"] is None
        assert 1 <= training["epochs_run"] <= PARAMS["epochs"]
        assert training["validation_users"] > 0
        assert all("val_recall@50" in epoch for epoch in training["epochs"])
        assert training["best_epoch"] is not None


class TestFallback:
    def test_empty_history_serves_popularity_without_tensorflow(self) -> None:
        out = run_python(
            """
            import json, sys
            from abplatform.domain import InteractionLog, RecRequest
            from abplatform.registry import build_strategy
            from tests.factories import LEGACY_TWO_TOWER, make_history

            full = make_history()
            empty = InteractionLog(full.catalog, full.user_ids[:0], full.item_ids[:0],
                                   full.event_types[:0], full.values[:0], full.timestamps[:0])
            strategy = build_strategy("two_tower", {}, seed=1)
            strategy.fit(empty)
            slate = strategy.recommend(RecRequest("user-1"), 5)
            print(json.dumps({"reason": strategy.fallback_reason, "items": slate.items,
                              "tf": "tensorflow" in sys.modules}))
            """
        )
        result = json.loads(out)
        assert result["reason"].startswith("the history has 0 click/purchase steps")
        assert len(set(result["items"])) == 5
        assert result["tf"] is False

    def test_too_few_interactions(self, caplog: pytest.LogCaptureFixture) -> None:
        log = make_history(n_events=6)
        strategy = TwoTowerStrategy(PARAMS, seed=1)
        strategy.fit(log)
        assert strategy.fallback_reason is not None
        assert "at least 10 are needed" in strategy.fallback_reason
        assert "serving a popularity ranking instead" in caplog.text
        counts: dict[str, float] = {}
        for item, kind in zip(log.item_ids.tolist(), log.event_types.tolist(), strict=True):
            counts[item] = counts.get(item, 0.0) + (5.0 if kind == "purchase" else 1.0)
        slate = strategy.recommend(RecRequest("user-1"), 3)
        assert counts.get(slate.items[0], 0) == max(counts.values())
        with pytest.raises(Exception, match="fell back to popularity"):
            strategy.embed_history(["item-001"])

    def test_one_item_only(self) -> None:
        log = make_history(n_items=1, n_events=50)
        strategy = TwoTowerStrategy(PARAMS, seed=1)
        strategy.fit(log)
        assert strategy.fallback_reason == "the history's clicks and purchases are all on one item"
        assert strategy.recommend(RecRequest("user-1"), 3).items == ("item-000",)


class TestArtifact:
    def test_round_trip_serves_identical_slates_without_tensorflow(
        self, fitted: TwoTowerStrategy, tmp_path: Path
    ) -> None:
        path = fitted.export(tmp_path, experiment="exp", variant="treatment", metrics={"m": 1.0})
        requests = [
            RecRequest("user-1"),
            RecRequest("user-7"),
            RecRequest("never-seen"),
            RecRequest("cold", current_item="item-012", cart_items=("item-002", "item-040")),
        ]
        expected = [list(s.items) for s in fitted.recommend_batch(requests, 10)]
        expected_scores = [list(s.scores) for s in fitted.recommend_batch(requests, 10)]
        out = run_python(
            f"""
            import json, sys
            from abplatform.domain import RecRequest
            from strategies.two_tower import TwoTowerStrategy

            strategy = TwoTowerStrategy.from_artifact({str(path.parent)!r})  # via LATEST
            requests = [
                RecRequest("user-1"),
                RecRequest("user-7"),
                RecRequest("never-seen"),
                RecRequest("cold", current_item="item-012", cart_items=("item-002", "item-040")),
            ]
            slates = strategy.recommend_batch(requests, 10)
            assert slates == [strategy.recommend(r, 10) for r in requests]
            assert "tensorflow" not in sys.modules
            print(json.dumps({{"items": [list(s.items) for s in slates],
                              "scores": [list(s.scores) for s in slates]}}))
            """
        )
        result = json.loads(out)
        assert result["items"] == expected
        assert result["scores"] == expected_scores

    def test_manifest_and_versions(self, fitted: TwoTowerStrategy, tmp_path: Path) -> None:
        first = fitted.export(tmp_path, experiment="exp", variant="v", metrics={"recall@10": 0.5})
        assert first.parent == tmp_path / "exp" / "v"
        assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{10}", first.name)
        manifest = json.loads((first / "manifest.json").read_text())
        assert manifest["format"] == "abplatform.two_tower"
        assert manifest["kind"] == "two_tower"
        assert manifest["version"] == first.name
        assert manifest["metrics"] == {"recall@10": 0.5}
        assert manifest["params"]["embedding_dim"] == 8
        assert manifest["seed"] == SEED
        assert manifest["data"]["interactions"] == 1500
        assert manifest["data"]["start"] < manifest["data"]["end"]
        assert manifest["libraries"]["tensorflow"] == "2.21.0"
        assert set(manifest["files"]) >= {"item_embeddings.npy", "user_tower.npz"}
        assert (tmp_path / "exp" / "v" / "LATEST").read_text().strip() == first.name
        artifact = load_artifact(first)
        assert artifact.item_embeddings.shape == (60, 9)  # 8 model axes + popularity

    def test_corruption_and_wrong_paths_are_clear_errors(
        self, fitted: TwoTowerStrategy, tmp_path: Path
    ) -> None:
        path = fitted.export(tmp_path, experiment="exp", variant="v")
        with pytest.raises(ArtifactError, match="not a two-tower artifact"):
            TwoTowerStrategy.from_artifact(tmp_path)
        target = path / "item_embeddings.npy"
        target.write_bytes(target.read_bytes()[:-4] + b"\x00\x00\x00\x01")
        with pytest.raises(ArtifactError, match="does not match its checksum"):
            TwoTowerStrategy.from_artifact(path)
        with pytest.raises(ArtifactError, match="cannot be a directory name"):
            fitted.export(tmp_path, experiment="../x", variant="v")


def small_world_log() -> InteractionLog:
    from simulator.history import generate_history
    from simulator.world import build_world

    sim = SimulationConfig(
        users=500,
        items=300,
        seed=3,
        world=WorldConfig(categories=6, brands=4, history_sessions_per_user=12),
    )
    world = build_world(sim)
    h = generate_history(world, 1_770_000_000, np.random.default_rng(3))
    return InteractionLog(
        catalog=world.catalog(),
        user_ids=world.user_ids[h.user],
        item_ids=world.item_ids[h.item],
        event_types=h.event_type,
        values=h.value,
        timestamps=h.ts,
    )


def test_learns_the_simulated_tastes() -> None:
    log = small_world_log()
    train, test = time_split(log, 1)
    ks = (10,)
    params = {"embedding_dim": 16, "hidden_units": [32], "batch_size": 256}
    tower = evaluate(build_strategy("two_tower", params, seed=1), train, test, ks=ks)
    popular = evaluate(build_strategy("popularity", {}, seed=1), train, test, ks=ks)
    random = evaluate(build_strategy("random", {}, seed=1), train, test, ks=ks)
    # 410 test users: a recall's standard error is at most 0.025, the gaps are > 4 of them.
    assert tower["recall@10"] > popular["recall@10"] + 0.1
    assert popular["recall@10"] > random["recall@10"] + 0.1


def test_train_experiment_evaluates_exports_and_reports(sqlite_url: str, tmp_path: Path) -> None:
    from abplatform.config import load_experiment_text
    from abplatform.storage.db import open_database
    from simulator.runner import simulate, simulation_catalog
    from strategies.training import train_experiment

    config = load_experiment_text(
        """
        key: tt_small
        variants:
          - {key: control, weight: 0.5, strategy: {kind: popularity}}
          - key: treatment
            weight: 0.5
            strategy:
              kind: two_tower
              params: {embedding_dim: 8, hidden_units: [8], epochs: 2, batch_size: 256}
        metrics: [{name: ctr, type: ratio, numerator: {event: click},
                   denominator: {event: impression}}]
        simulation:
          users: 300
          items: 120
          days: 1
          world: {categories: 5, brands: 3, history_sessions_per_user: 8}
        """
    )
    engine = open_database(sqlite_url)
    simulate(engine, config)
    stages: list[str] = []
    report = train_experiment(
        engine,
        config,
        simulation_catalog(config),
        artifacts_dir=tmp_path,
        progress=lambda stage, done, total: stages.append(stage),
        seed=42,
    )
    assert [r.name for r in report.results] == [
        "control",
        "treatment",
        "baseline:popularity",
        "baseline:random",
    ]
    assert {"load", "fit"} <= set(stages)
    assert report.split.test_users > 0 and report.data.items == 120
    control = report.result("control")
    assert control.artifact is not None  # a snapshot of the history popularity fits on
    assert json.loads((control.artifact / "manifest.json").read_text())["kind"] == "popularity"
    assert control.metrics == report.result("baseline:popularity").metrics
    treatment = report.result("treatment")
    assert treatment.artifact is not None
    manifest = json.loads((treatment.artifact / "manifest.json").read_text())
    assert manifest["metrics"] == treatment.metrics
    assert manifest["experiment"] == "tt_small" and manifest["variant"] == "treatment"
    stored = json.loads((tmp_path / "tt_small" / "train_report.json").read_text())
    assert list(stored["variants"]) == [r.name for r in report.results]
    assert stored["variants"]["treatment"]["model_id"] == treatment.model_id
    assert stored["variants"]["baseline:random"]["model_id"] is None
    served = TwoTowerStrategy.from_artifact(tmp_path / "tt_small" / "treatment")
    assert len(served.recommend(RecRequest("u000001"), 5).items) == 5
    engine.dispose()

    # Both variants are registered candidates; the two-tower one loads without TensorFlow.
    out = run_python(
        f"""
        import json, sys
        from abplatform.domain import RecRequest
        from abplatform.storage.db import open_database, transaction
        from abplatform.storage.model_registry import list_models
        from strategies.registered import load_model

        with transaction(open_database({sqlite_url!r})) as session:
            records = {{r.variant: r for r in list_models(session, "tt_small")}}  # newest
        slates = {{
            name: list(load_model(r).recommend(RecRequest("u000001"), 5).items)
            for name, r in records.items()
        }}
        print(json.dumps({{
            "tf": [m for m in sys.modules if m.split(".")[0] == "tensorflow"],
            "records": {{name: r.to_dict() for name, r in records.items()}},
            "slates": slates,
        }}))
        """
    )
    loaded = json.loads(out)
    assert loaded["tf"] == []
    records = loaded["records"]
    assert set(records) == {"control", "treatment"}
    assert records["treatment"]["id"] == treatment.model_id
    # `simulate` registered version 1 of each variant (the model it served); train's is 2.
    assert records["treatment"]["kind"] == "two_tower" and records["treatment"]["version"] == 2
    assert records["treatment"]["status"] == "candidate"
    assert records["treatment"]["metrics"] == {k: v for k, v in treatment.metrics.items() if v == v}
    assert records["control"]["catalog"] == simulation_catalog(config)
    assert records["control"]["history_rows"] == report.data.interactions
    assert report.data.end is not None
    cutoff = datetime.fromtimestamp(report.data.end, UTC).replace(tzinfo=None)
    assert records["control"]["history_cutoff"] == cutoff.isoformat()
    expected = [RecRequest("u000001")]
    assert loaded["slates"]["treatment"] == list(served.recommend_batch(expected, 5)[0].items)


def test_profile_features_feed_the_user_tower() -> None:
    from dataclasses import replace

    from strategies.two_tower.data import UserInputs

    base = make_history(n_events=600)
    profiles: dict[str, dict[str, Any]] = {
        f"user-{u}": {"segment": ["gold", "silver"][u % 2], "age": 20 + u} for u in range(40)
    }
    profiles["profile-only"] = {"segment": "gold", "age": 50, "vip": True}
    log = replace(base, user_features=profiles)
    strategy = TwoTowerStrategy({**PARAMS, "epochs": 1}, seed=2)
    strategy.fit(log)
    encoder = strategy.artifact.feature_encoder
    assert [name for name, _ in encoder.categorical] == ["segment", "vip"]
    assert [name for name, _, _ in encoder.numeric] == ["age"]
    # A user known only by their profile has a stored embedding: OOV id, empty history.
    assert "profile-only" in strategy.artifact.user_ids.tolist()
    codes, numbers = encoder.transform(["profile-only"], profiles)
    inputs = UserInputs(
        np.array(["profile-only"]),
        np.zeros((1, PARAMS["history_length"]), dtype=np.int32),
        codes,
        numbers,
    )
    tf_query = strategy.towers.user_embeddings(inputs)
    row = strategy.artifact.user_ids.tolist().index("profile-only")
    assert_allclose(strategy.artifact.user_embeddings[row, :-1], tf_query[0], atol=2e-6)
    numpy_query = strategy.embed_history([], "profile-only", profiles["profile-only"])
    assert_allclose(numpy_query, tf_query, atol=1e-5)


@pytest.mark.parametrize(("n_items", "dim"), [(5000, 33), (777, 9), (60, 5)])
def test_item_index_is_the_exact_top_k(n_items: int, dim: int) -> None:
    from strategies.two_tower.serving import ItemIndex, quantize

    rng = np.random.default_rng(n_items)
    raw = rng.normal(size=(n_items, dim))
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    raw[:, -1] = rng.random(n_items)  # a popularity-like axis
    items = quantize(raw)
    items[5] = items[7]  # exact ties, broken by the lower index
    items[11] = items[3]
    queries = rng.normal(size=(300, dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    queries = quantize(queries).astype(np.float64)
    excluded = [rng.choice(n_items, size=rng.integers(0, 20), replace=False) for _ in range(300)]
    index = ItemIndex.build(items)
    exact = queries @ items.astype(np.float64).T
    ranking = exact.copy()
    for row, bought in enumerate(excluded):
        ranking[row, bought] -= 4.0
    for k in (1, 10, 50, n_items):
        got, scores = index.search(queries, k, excluded)
        expected = np.argsort(-ranking, axis=1, kind="stable")[:, :k]
        assert np.array_equal(got, expected)
        assert np.array_equal(scores, np.take_along_axis(exact, expected, axis=1))
        one_by_one = [
            index.search(queries[i : i + 1], k, excluded[i : i + 1])[0][0] for i in range(20)
        ]
        assert np.array_equal(np.stack(one_by_one), got[:20])
