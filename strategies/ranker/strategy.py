"""The `ranker` strategy: p(click) and p(purchase | click) of candidates, served in NumPy."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Unpack

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from abplatform.domain import Catalog, InteractionLog, RecRequest, Slate
from abplatform.errors import AbplatformError
from abplatform.registry import strategies
from strategies.array_artifact import catalog_arrays, catalog_of, export_version, read_version
from strategies.base import ArtifactPlace, BaseStrategy, NotFittedError, StrategyParams, check_k
from strategies.ranker.data import ImpressionLog, current_source, read_impressions
from strategies.ranker.features import (
    SERVING_POSITION,
    BehaviourCounts,
    FeatureSpace,
    ProfileEncoding,
    feature_space,
    training_matrix,
)
from strategies.ranker.metrics import HeadQuality, finite_or_none, head_quality
from strategies.ranker.numpy_model import RankerWeights
from strategies.ranker.peers import (
    lightgbm_available,
    lightgbm_probabilities,
    logistic_probabilities,
)

log = logging.getLogger(__name__)
FORMAT = "abplatform.ranker"
FORMAT_VERSION = 1
_FILES = ("items.npz", "features.npz", "weights.npz")


class RankerParams(StrategyParams):
    """Parameters of the learned ranker.

    Attributes
    ----------
    objective
        {"click", "purchase", "revenue"}: the serving score, p(click), p(click) x
        p(purchase | click), or that times the item's price.
    experiment
        Whose logged impressions to train on; None: the experiment being trained.
    hidden
        Units of the ReLU layers after the cross layer.
    with_position
        Position is a training feature (fixed at 0 when serving); false leaves it out.
    holdout
        Share of the newest exposures held out for the offline metrics.
    min_impressions, min_clicks
        Fewer logged impressions or clicks than this: fall back to the merge order.
    """

    objective: Literal["click", "purchase", "revenue"] = "click"
    experiment: str | None = None
    hidden: tuple[int, ...] = Field(default=(64, 32), min_length=1, max_length=4)
    epochs: int = Field(default=5, ge=1, le=200)
    batch_size: int = Field(default=1024, ge=16, le=65536)
    learning_rate: float = Field(default=3e-3, gt=0.0, le=1.0, allow_inf_nan=False)
    with_position: bool = True
    holdout: float = Field(default=0.2, gt=0.0, lt=1.0)
    min_impressions: int = Field(default=1000, ge=1)
    min_clicks: int = Field(default=20, ge=1)
    max_exposures: int = Field(default=200_000, ge=1)


def catalog_digest(catalog: Catalog) -> str:
    """Identity of a catalogue's item order: what the ranker's item rows are aligned with."""
    return hashlib.sha256("\n".join(catalog.item_ids.astype(str).tolist()).encode()).hexdigest()


@dataclass(frozen=True)
class RankerArtifact:
    """What serving needs: the layout, per-user rows at the cut-off, weights (or a fallback)."""

    catalog: Catalog
    space: FeatureSpace
    user_ids: npt.NDArray[np.str_]
    user_rows: npt.NDArray[np.float32]
    weights: RankerWeights | None
    manifest: dict[str, Any]


@strategies.register("ranker")
class RankerStrategy(BaseStrategy):
    """A deep-and-cross click + purchase model over logged impressions.

    `fit` reads the impressions of the enclosing `logged_impressions` block (set by
    `abplatform train`), trains on all but the newest `holdout` share of exposures and
    reports AUC / log loss / ECE per head on them beside a logistic regression. Without
    enough impressions or clicks it falls back (logged reason): `score_items` then keeps
    the candidates' given order. Serving is NumPy only.
    """

    kind = "ranker"
    Params: ClassVar[type[BaseModel]] = RankerParams

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self._artifact: RankerArtifact | None = None
        self.keras_model: Any = None
        self.quality: dict[str, dict[str, HeadQuality]] = {}

    # ---- training ---------------------------------------------------------------------
    def fit(self, history: InteractionLog) -> None:
        """Train on logged impressions, or fall back with a logged reason."""
        super().fit(history)
        params: RankerParams = self.params
        source = current_source()
        impressions: ImpressionLog | None = None
        if source is not None:
            scope = params.experiment or source.experiment
            impressions = read_impressions(
                source.engine,
                experiment=scope,
                catalog=None if scope else source.catalog,
                max_exposures=params.max_exposures,
            )
        self.fit_impressions(history, impressions)

    def fit_impressions(self, history: InteractionLog, impressions: ImpressionLog | None) -> None:
        """Train on `impressions` (None: nothing logged) with `history` as behaviour."""
        BaseStrategy.fit(self, history)
        params: RankerParams = self.params
        catalog = history.catalog
        index = catalog.index()
        scenes = [] if impressions is None else impressions.scenes.tolist()
        space = feature_space(catalog, history.user_features, scenes)
        reason = self._fallback_reason(impressions)
        if reason is not None or impressions is None:
            log.warning("ranker: %s; the pipeline keeps its retrieval order", reason)
            self._use(self._artifact_of(history, space, None, {"fallback": reason}))
            return
        x, known = training_matrix(
            space, impressions, history, index, with_position=params.with_position
        )
        clicked, purchased = impressions.clicked[known], impressions.purchased[known]
        held = impressions.holdout_mask(params.holdout)[known]
        from strategies.ranker.model import train_ranker

        model, weights = train_ranker(
            x[~held],
            clicked[~held],
            purchased[~held],
            hidden=params.hidden,
            epochs=params.epochs,
            batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            seed=self.seed,
        )
        self.keras_model = model
        self.quality = offline_quality(weights, x, clicked, purchased, held, self.seed)
        training = {
            "fallback": None,
            "impressions": int(known.sum()),
            "dropped_unknown_items": int((~known).sum()),
            "holdout_rows": int(held.sum()),
            "quality": {
                model_name: {head: finite_or_none(q) for head, q in heads.items()}
                for model_name, heads in self.quality.items()
            },
        }
        self._use(self._artifact_of(history, space, weights, training))

    def _fallback_reason(self, impressions: ImpressionLog | None) -> str | None:
        params: RankerParams = self.params
        if impressions is None:
            return (
                "no logged impressions to train on (rankers train inside `abplatform train`, "
                "or in `abplatform simulate` with simulation.logging_days >= 1)"
            )
        if len(impressions) < params.min_impressions:
            return (
                f"{len(impressions)} logged impressions, fewer than "
                f"min_impressions={params.min_impressions}"
            )
        clicks = int(impressions.clicked.sum())
        if clicks < params.min_clicks:
            return (
                f"{clicks} clicks in the logged impressions, "
                f"fewer than min_clicks={params.min_clicks}"
            )
        return None

    def _artifact_of(
        self,
        history: InteractionLog,
        space: FeatureSpace,
        weights: RankerWeights | None,
        training: dict[str, Any],
    ) -> RankerArtifact:
        counts = BehaviourCounts.of(history)
        cutoff = history.end_timestamp + 1
        users = sorted(set(history.user_features) | set(counts.users))
        rows = np.zeros((len(users), space.user_width), dtype=np.float32)
        for i, user in enumerate(users):
            rows[i] = space.user_row(history.user_features.get(user), counts.before(user, cutoff))
        manifest = {
            "kind": self.kind,
            "params": self.params.model_dump(mode="json"),
            "seed": self.seed,
            "catalog_sha256": catalog_digest(history.catalog),
            "profile": space.profile.to_json(),
            "scenes": list(space.scenes),
            "training": training,
        }
        return RankerArtifact(
            history.catalog, space, np.array(users, dtype=str), rows, weights, manifest
        )

    # ---- artifact ---------------------------------------------------------------------
    def _use(self, artifact: RankerArtifact) -> None:
        self._catalog = artifact.catalog
        self._artifact = artifact
        self._user_row = {u: i for i, u in enumerate(artifact.user_ids.tolist())}
        self._unknown_user = artifact.space.user_row(None, np.zeros(2, np.float32))
        self._prices = np.nan_to_num(artifact.catalog.prices.astype(np.float64), nan=0.0)

    @property
    def artifact(self) -> RankerArtifact:
        """The trained (or loaded) ranker."""
        if self._artifact is None:
            raise NotFittedError(
                f"strategy {self.kind!r} is not fitted",
                hint="train it (abplatform train), or RankerStrategy.from_artifact(path)",
            )
        return self._artifact

    @property
    def fallback_reason(self) -> str | None:
        """Why the ranker did not train (None when it did)."""
        reason: str | None = self.artifact.manifest["training"].get("fallback")
        return reason

    def check_catalog(self, catalog: Catalog) -> None:
        """Refuse to rank the items of a catalogue other than the one it was trained on."""
        expected = self.artifact.manifest["catalog_sha256"]
        if catalog_digest(catalog) != expected:
            raise AbplatformError(
                f"ranker was trained on another catalogue (items sha256 {expected[:12]}, "
                f"got {catalog_digest(catalog)[:12]})",
                hint="train the ranker on this catalogue's logged impressions",
            )

    def export(self, root: str | Path, **place: Unpack[ArtifactPlace]) -> Path:
        """Write the layout, user rows and weights as a new version under ``root``."""
        artifact = self.artifact
        weights = {} if artifact.weights is None else artifact.weights.to_arrays()
        files: dict[str, dict[str, npt.NDArray[Any]]] = {
            "items.npz": catalog_arrays(artifact.catalog),
            "features.npz": {
                "items": artifact.space.items,
                "user_ids": artifact.user_ids.astype(str),
                "user_rows": artifact.user_rows,
            },
            "weights.npz": {name: np.asarray(a) for name, a in weights.items()}
            or {"empty": np.zeros(0, np.float32)},
        }
        return export_version(
            root,
            format_name=FORMAT,
            format_version=FORMAT_VERSION,
            files=files,
            manifest=artifact.manifest,
            place=place,
        )

    @classmethod
    def from_artifact(cls, path: str | Path) -> RankerStrategy:
        """A ranker serving an exported version (checksums checked), NumPy only."""
        manifest, arrays = read_version(
            path, format_name=FORMAT, format_version=FORMAT_VERSION, files=_FILES
        )
        strategy = cls(manifest.get("params", {}), seed=int(manifest.get("seed", 0)))
        features = arrays["features.npz"]
        weights = arrays["weights.npz"]
        space = FeatureSpace(
            features["items"],
            ProfileEncoding.from_json(manifest["profile"]),
            tuple(manifest["scenes"]),
        )
        strategy._use(
            RankerArtifact(
                catalog=catalog_of(arrays["items.npz"]),
                space=space,
                user_ids=features["user_ids"],
                user_rows=features["user_rows"],
                weights=None if "empty" in weights else RankerWeights.from_arrays(weights),
                manifest=manifest,
            )
        )
        return strategy

    # ---- serving ----------------------------------------------------------------------
    def features_of(
        self, request: RecRequest, items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """The serving rows of one request's candidates (position fixed)."""
        artifact = self.artifact
        row = self._user_row.get(request.unit_id)
        user = self._unknown_user if row is None else artifact.user_rows[row]
        scene = artifact.space.scene_row(request.scene)
        return artifact.space.rows(items, user, scene, SERVING_POSITION)

    def score_items(
        self, requests: Sequence[RecRequest], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """The objective's score of each candidate; a fallback keeps the given order."""
        artifact = self.artifact
        items = np.asarray(items, dtype=np.int64)
        if items.ndim != 2 or items.shape[0] != len(requests):
            raise ValueError(
                f"items must be (requests, n) = ({len(requests)}, n) (got {items.shape})"
            )
        n = items.shape[1]
        if artifact.weights is None:
            return np.tile(1.0 - np.arange(n) / max(n, 1), (len(requests), 1))
        out = np.empty(items.shape, dtype=np.float64)
        objective = self.params.objective
        for r, request in enumerate(requests):
            p = artifact.weights.probabilities(self.features_of(request, items[r]))
            score = p["click"]
            if objective != "click":
                score = score * p["purchase"]
            if objective == "revenue":
                score = score * self._prices[items[r]]
            out[r] = score
        return out

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """The top k of the whole catalogue by `score_items` (ties by catalogue order)."""
        check_k(k)
        everything = np.arange(len(self.catalog), dtype=np.int64)
        slates = []
        for request in requests:
            scores = self.score_items([request], everything[None, :])[0]
            order = np.argsort(-scores, kind="stable")[:k]
            slates.append(self._slate(order, scores[order]))
        return slates


def offline_quality(
    weights: RankerWeights,
    x: npt.NDArray[np.float32],
    clicked: npt.NDArray[np.bool_],
    purchased: npt.NDArray[np.bool_],
    held: npt.NDArray[np.bool_],
    seed: int = 0,
) -> dict[str, dict[str, HeadQuality]]:
    """Per model ("ranker", "logistic", "lightgbm" when installed) and head, quality on the
    held-out rows; every peer is fitted on the same training rows and features. The
    purchase head is scored on held-out clicked rows (it predicts p(purchase | click))."""
    train, test = ~held, held
    ranker = weights.probabilities(x[test])
    out: dict[str, dict[str, HeadQuality]] = {
        "ranker": {
            "click": head_quality(clicked[test], ranker["click"]),
            "purchase": head_quality(purchased[test & clicked], ranker["purchase"][clicked[test]]),
        }
    }
    peers = {"logistic": logistic_probabilities}
    if lightgbm_available():
        peers["lightgbm"] = lightgbm_probabilities
    train_clicked, test_clicked = train & clicked, test & clicked
    for name, fit_predict in peers.items():
        out[name] = {
            "click": head_quality(
                clicked[test], fit_predict(x[train], clicked[train], x[test], seed)
            ),
            "purchase": head_quality(
                purchased[test_clicked],
                fit_predict(x[train_clicked], purchased[train_clicked], x[test_clicked], seed),
            ),
        }
    return out
