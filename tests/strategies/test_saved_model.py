"""The two-tower SavedModel export: the TF top-k equals the NumPy serving path, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose

from abplatform.artifacts import ArtifactError
from abplatform.domain import InteractionLog, RecRequest
from abplatform.errors import AbplatformError
from strategies.two_tower import TwoTowerStrategy
from strategies.two_tower.artifact import export_artifact, load_artifact
from strategies.two_tower.data import positive_sequences, user_inputs
from strategies.two_tower.saved_model import (
    EXPORT_INFO,
    SavedModelExport,
    export_saved_model,
)
from strategies.two_tower.serving import ItemIndex, quantize
from tests.factories import cli, make_history

ROOT = Path(__file__).resolve().parents[2]
K = 12
PARAMS: dict[str, Any] = {
    "embedding_dim": 8,
    "hidden_units": [16, 8],  # two ReLU layers and a projection
    "epochs": 3,
    "batch_size": 128,
    "history_length": 5,
    "item_bias": True,  # the offset axis
    "cold_popularity_weight": 0.3,  # profile-only users' popularity axis
    "exclude_purchased": True,
}
SEED = 5
TOLERANCE = 1e-5


@dataclass(frozen=True)
class User:
    """One row of a signature call: id, recent items (newest first) and profile."""

    user_id: str
    history: tuple[str, ...]
    profile: Mapping[str, Any]


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


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    """A history with tags, a categorical and a numeric profile feature, profile-only users."""
    base = make_history(n_events=1500)
    labels = ["red|sale", "blue", "red|new|sale", ""]
    catalog = replace(
        base.catalog, tags=np.array([labels[i % 4] for i in range(len(base.catalog))])
    )
    profiles: dict[str, dict[str, Any]] = {
        f"user-{u}": {"segment": ["gold", "silver", "bronze"][u % 3], "age": 18 + 2 * u}
        for u in range(0, 40, 2)  # half of the users have a profile
    }
    profiles["profile-only-1"] = {"segment": "gold", "age": 61}
    profiles["profile-only-2"] = {"segment": "silver"}  # age missing
    return replace(base, catalog=catalog, user_features=profiles)


@pytest.fixture(scope="module")
def artifact_dir(log: InteractionLog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    strategy = TwoTowerStrategy(PARAMS, seed=SEED)
    strategy.fit(log)
    assert strategy.fallback_reason is None
    return strategy.export(tmp_path_factory.mktemp("artifacts"), experiment="exp", variant="tt")


@pytest.fixture(scope="module")
def fallback_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact that fell back to popularity (too little history): no user tower."""
    strategy = TwoTowerStrategy(PARAMS, seed=1)
    strategy.fit(make_history(n_events=6))
    return strategy.export(tmp_path_factory.mktemp("fallback"), experiment="e", variant="v")


@pytest.fixture(scope="module")
def served(artifact_dir: Path) -> TwoTowerStrategy:
    """The NumPy serving path, from the exported artifact (no TensorFlow)."""
    return TwoTowerStrategy.from_artifact(artifact_dir)


@pytest.fixture(scope="module")
def exported(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SavedModelExport:
    return export_saved_model(artifact_dir, tmp_path_factory.mktemp("serving"), k=K)


@pytest.fixture(scope="module")
def loaded(exported: SavedModelExport) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(exported.path))


def known_users(log: InteractionLog, served: TwoTowerStrategy) -> list[User]:
    """Every known user with the history and profile their stored embedding came from."""
    artifact = served.artifact
    inputs = user_inputs(
        positive_sequences(log, served.params.purchase_weight),
        artifact.user_ids,
        artifact.feature_encoder,
        log.user_features,
        served.params.history_length,
    )
    ids = artifact.catalog.item_ids
    return [
        User(user, tuple(ids[t - 1] for t in tokens if t > 0), log.user_features.get(user, {}))
        for user, tokens in zip(inputs.user_ids.tolist(), inputs.history.tolist(), strict=True)
    ]


COLD_USERS = [
    User("cold-1", ("item-012",), {}),
    User("cold-2", ("item-030", "no-such-item", "item-002"), {}),  # unknown ids are skipped
    # More than history_length catalogue items: only the first five count.
    User("cold-3", ("item-001", "item-044", "item-007", "item-019", "item-003", "item-050"), {}),
    User("nobody", (), {}),  # nothing known: the popularity ranking
]


def call(loaded: Any, exported: SavedModelExport, users: Sequence[User]) -> tuple[Any, Any]:
    """The serving signature's item ids (as str) and scores for `users`."""
    import tensorflow as tf

    width = max(1, *(len(u.history) for u in users))
    feeds: dict[str, Any] = {
        "user_id": tf.constant([u.user_id for u in users]),
        "history": tf.constant([list(u.history) + [""] * (width - len(u.history)) for u in users]),
    }
    for spec in exported.inputs:
        if spec.feature is None:
            continue
        values = [u.profile.get(spec.feature) for u in users]
        if spec.dtype == "string":
            feeds[spec.name] = tf.constant(["" if v is None else str(v) for v in values])
        else:
            numbers = [np.nan if v is None else float(v) for v in values]
            feeds[spec.name] = tf.constant(numbers, dtype=tf.float64)
    out = loaded.signatures["serving_default"](**feeds)
    ids = np.vectorize(bytes.decode)(out["item_ids"].numpy()).astype(str)
    return ids, out["scores"].numpy()


def tower_path(
    served: TwoTowerStrategy, users: Sequence[User], k: int, *, exclude: bool = True
) -> tuple[Any, Any]:
    """The NumPy path's top-k when every query comes from the NumPy user tower.

    Known users as training stored them (their id, latest items and profile, and
    `cold_popularity_weight` on the popularity axis without behaviour), their purchases
    excluded with `exclude`; unknown users as `recommend` embeds them.
    """
    artifact = served.artifact
    rows = {user: i for i, user in enumerate(artifact.user_ids.tolist())}
    catalogue = set(artifact.catalog.item_ids.tolist())
    queries = np.zeros((len(users), artifact.dim))
    excluded = []
    for i, user in enumerate(users):
        row = rows.get(user.user_id)
        has_items = any(item in catalogue for item in user.history)
        mine = artifact.purchased(row) if row is not None and exclude else None
        excluded.append(np.zeros(0, np.int64) if mine is None else mine)
        if row is None and not has_items:
            queries[i] = artifact.default_embedding
            continue
        embedded = served.embed_history(list(user.history), user.user_id, user.profile)[0]
        weight = served.params.cold_popularity_weight if row is not None and not has_items else 0
        offset = [1.0] * (artifact.dim - 1 - embedded.size)  # the item-bias axis, if any
        queries[i] = quantize(np.concatenate([embedded, offset, [weight]]))
    index = ItemIndex.build(artifact.item_embeddings)
    picked, scores = index.search(queries, k, excluded)
    return artifact.catalog.item_ids[picked].astype(str), scores


def cold_request(user: User) -> RecRequest:
    """The request whose context `recommend` reads as `user.history` (current item first)."""
    if not user.history:
        return RecRequest(user.user_id)
    return RecRequest(user.user_id, current_item=user.history[0], cart_items=user.history[:0:-1])


@pytest.mark.slow
class TestParity:
    def test_cold_users_equal_recommend(
        self, loaded: Any, exported: SavedModelExport, served: TwoTowerStrategy
    ) -> None:
        ids, scores = call(loaded, exported, COLD_USERS)
        slates = served.recommend_batch([cold_request(u) for u in COLD_USERS], K)
        assert ids.tolist() == [list(s.items) for s in slates]
        assert_allclose(scores, [s.scores for s in slates], rtol=0, atol=TOLERANCE)
        # Four different queries (one context each, and the default one).
        assert len({tuple(row) for row in scores.round(9).tolist()}) == len(COLD_USERS)

    def test_known_users_equal_the_numpy_tower_path(
        self,
        loaded: Any,
        exported: SavedModelExport,
        served: TwoTowerStrategy,
        log: InteractionLog,
    ) -> None:
        users = known_users(log, served)
        assert {"profile-only-1", "profile-only-2"} <= {u.user_id for u in users}
        ids, scores = call(loaded, exported, users)
        expected_ids, expected_scores = tower_path(served, users, K)
        assert ids.tolist() == expected_ids.tolist()
        assert_allclose(scores, expected_scores, rtol=0, atol=TOLERANCE)

    def test_known_users_agree_with_recommend_up_to_near_ties(
        self,
        loaded: Any,
        exported: SavedModelExport,
        served: TwoTowerStrategy,
        log: InteractionLog,
    ) -> None:
        # `recommend` reads the user embeddings TensorFlow stored at training (float32 Keras,
        # within 2e-6 of the float64 tower): every rank's score agrees within the tolerance,
        # and two slates may differ only by swapping items whose scores are that close.
        users = known_users(log, served)
        ids, scores = call(loaded, exported, users)
        slates = served.recommend_batch([RecRequest(u.user_id) for u in users], K)
        assert_allclose(scores, [s.scores for s in slates], rtol=0, atol=TOLERANCE)
        for row, slate in enumerate(slates):
            for rank, item in enumerate(slate.items):
                if ids[row, rank] != item:
                    assert abs(scores[row, rank] - slate.scores[rank]) < TOLERANCE

    def test_purchases_are_excluded_like_recommend(
        self,
        loaded: Any,
        exported: SavedModelExport,
        served: TwoTowerStrategy,
        log: InteractionLog,
        tmp_path: Path,
    ) -> None:
        import tensorflow as tf

        users = known_users(log, served)
        artifact = served.artifact
        bought = [
            set(artifact.catalog.item_ids[artifact.purchased(row)]) for row in range(len(users))
        ]
        ids, _ = call(loaded, exported, users)
        assert not any(set(slate) & items for slate, items in zip(ids, bought, strict=True))
        # The same artifact with exclude_purchased off: the SavedModel follows it, equal to
        # the NumPy path without exclusion, and purchases come back (the test above bites).
        params = {**artifact.manifest["params"], "exclude_purchased": False}
        keep = export_artifact(
            artifact.with_manifest(params=params), tmp_path / "art", experiment="e", variant="v"
        )
        unexcluded = export_saved_model(keep, tmp_path / "serving", k=K)
        again, again_scores = call(tf.saved_model.load(str(unexcluded.path)), unexcluded, users)
        expected_ids, expected_scores = tower_path(served, users, K, exclude=False)
        assert again.tolist() == expected_ids.tolist()
        assert_allclose(again_scores, expected_scores, rtol=0, atol=TOLERANCE)
        with_purchases = sum(bool(set(s) & b) for s, b in zip(again, bought, strict=True))
        assert with_purchases > 0

    def test_a_batch_equals_one_user_at_a_time(
        self, loaded: Any, exported: SavedModelExport, served: TwoTowerStrategy, log: InteractionLog
    ) -> None:
        users = [*known_users(log, served)[:5], *COLD_USERS]
        ids, scores = call(loaded, exported, users)
        for i, user in enumerate(users):
            one_ids, one_scores = call(loaded, exported, [user])
            assert one_ids[0].tolist() == ids[i].tolist()
            assert_allclose(one_scores[0], scores[i], rtol=0, atol=1e-12)


@pytest.mark.slow
class TestLayout:
    def test_versioned_directory_and_signature(
        self, exported: SavedModelExport, loaded: Any, artifact_dir: Path
    ) -> None:
        assert exported.path.name == "1" and exported.path.parent.name == "two_tower"
        assert (exported.path / "saved_model.pb").is_file()
        assert (exported.path / "variables").is_dir()
        assert [i.name for i in exported.inputs] == [
            "user_id",
            "history",
            "feature_segment",
            "feature_age",
        ]
        signature = loaded.signatures["serving_default"]
        specs = signature.structured_input_signature[1]
        assert {name: (spec.dtype.name, spec.shape.as_list()) for name, spec in specs.items()} == {
            "user_id": ("string", [None]),
            "history": ("string", [None, None]),
            "feature_segment": ("string", [None]),
            "feature_age": ("float64", [None]),
        }
        outputs = signature.structured_outputs
        assert {n: (s.dtype.name, s.shape.as_list()) for n, s in outputs.items()} == {
            "item_ids": ("string", [None, K]),
            "scores": ("float64", [None, K]),
        }
        info = json.loads((exported.path / EXPORT_INFO).read_text())
        assert info["k"] == K
        assert info["source"]["version"] == load_artifact(artifact_dir).manifest["version"]
        assert [i["name"] for i in info["inputs"]] == [i.name for i in exported.inputs]

    def test_a_new_export_is_the_next_version_and_k_is_capped(
        self, artifact_dir: Path, tmp_path: Path
    ) -> None:
        first = export_saved_model(artifact_dir, tmp_path, k=1000, model_name="homepage")
        second = export_saved_model(artifact_dir, tmp_path, k=3, model_name="homepage")
        assert (first.version, second.version) == (1, 2)
        assert first.k == 60  # the catalogue's size
        assert sorted(p.name for p in (tmp_path / "homepage").iterdir()) == ["1", "2"]


class TestErrors:
    def test_a_popularity_fallback_has_no_tower_and_tensorflow_is_not_imported(
        self, fallback_dir: Path, tmp_path: Path
    ) -> None:
        path = fallback_dir
        out = run_python(
            f"""
            import json, sys
            from strategies.two_tower.saved_model import export_saved_model
            try:
                export_saved_model({str(path)!r}, {str(tmp_path / "serving")!r})
            except Exception as exc:
                print(json.dumps({{"error": str(exc), "tf": "tensorflow" in sys.modules}}))
            """
        )
        result = json.loads(out)
        assert "has no user tower: the strategy fell back to popularity" in result["error"]
        assert "at least 10 are needed" in result["error"]
        assert result["tf"] is False
        assert not (tmp_path / "serving").exists()

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"k": 0}, "k must be a positive integer (got 0)"),
            ({"k": True}, "k must be a positive integer (got True)"),
            ({"model_name": "../up"}, "model_name '../up' cannot be a TensorFlow Serving"),
        ],
    )
    def test_bad_arguments(self, arguments: dict[str, Any], message: str, tmp_path: Path) -> None:
        with pytest.raises(AbplatformError) as info:
            export_saved_model(tmp_path, tmp_path / "out", **arguments)
        assert message in str(info.value)

    def test_not_an_artifact(self, tmp_path: Path) -> None:
        with pytest.raises(ArtifactError, match="is not a two-tower artifact"):
            export_saved_model(tmp_path, tmp_path / "out")


def registered(url: str, artifact: Path, kind: str = "two_tower") -> int:
    """Register an exported artifact in a new database at `url`; its model id."""
    from abplatform.artifacts import artifact_sha256
    from abplatform.storage.db import open_database, transaction
    from abplatform.storage.model_registry import register

    engine = open_database(url)
    with transaction(engine) as session:
        record = register(
            session,
            experiment="exp",
            variant="tt",
            kind=kind,
            params=dict(PARAMS) if kind == "two_tower" else {},
            seed=SEED,
            catalog="shop",
            history_cutoff=None,
            history_rows=0,
            artifact_path=artifact,
            artifact_sha256=artifact_sha256(artifact),
            metrics={},
        )
    engine.dispose()
    return record.id


class TestCommand:
    def test_unknown_format_and_fallback_exit_2(self, fallback_dir: Path, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path}/models.db"
        model = str(registered(url, fallback_dir))
        out_dir = tmp_path / "out"
        out = cli("models", "export", model, str(out_dir), "--format", "onnx", "--db", url)
        assert out.returncode == 2
        assert "unknown --format 'onnx'" in out.stderr and "use saved_model" in out.stderr
        out = cli("models", "export", model, str(out_dir), "--format", "saved_model", "--db", url)
        assert out.returncode == 2
        assert "has no user tower: the strategy fell back to popularity" in out.stderr
        assert "Traceback" not in out.stderr
        out = cli("models", "export", "99", str(out_dir), "--db", url)
        assert out.returncode == 2 and "99" in out.stderr
        assert not out_dir.exists() or not any(out_dir.iterdir())

    def test_other_kinds_and_changed_artifacts_exit_2(
        self, fallback_dir: Path, tmp_path: Path
    ) -> None:
        import shutil

        url = f"sqlite:///{tmp_path}/models.db"
        copy = tmp_path / "copy"
        shutil.copytree(fallback_dir, copy)
        popularity = str(registered(url, copy, kind="popularity"))
        out = cli("models", "export", popularity, str(tmp_path / "out"), "--db", url)
        assert out.returncode == 2
        assert "is a 'popularity' model: only two_tower models export" in out.stderr
        changed = str(registered(url, copy))
        (copy / "default_embedding.npy").write_bytes(b"changed")
        out = cli("models", "export", changed, str(tmp_path / "out"), "--db", url)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert str(copy.resolve()) in out.stderr and "sha256" in out.stderr

    @pytest.mark.slow
    def test_models_export_writes_the_saved_model(
        self, artifact_dir: Path, loaded: Any, exported: SavedModelExport, tmp_path: Path
    ) -> None:
        import tensorflow as tf

        url = f"sqlite:///{tmp_path}/models.db"
        model = str(registered(url, artifact_dir))
        out = cli(
            "models", "export", model, str(tmp_path), "--format", "saved_model", "--k", "5",
            "--db", url,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        version = tmp_path / "two_tower" / "1"
        assert out.stdout.strip() == str(version)
        assert "SavedModel version 1 of 'two_tower' (top 5) from model 1 (exp/tt v1)" in out.stderr
        from_cli = tf.saved_model.load(str(version))
        five = replace(exported, k=5)
        ids, scores = call(from_cli, five, COLD_USERS)
        expected_ids, expected_scores = call(loaded, exported, COLD_USERS)
        assert ids.tolist() == expected_ids[:, :5].tolist()
        assert_allclose(scores, expected_scores[:, :5], rtol=0, atol=1e-12)
