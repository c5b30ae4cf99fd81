"""Serve a registered model: verify its artifact, then load it by kind, never with TensorFlow.

`load_model(record)` is how the API and the simulator turn a row of the model registry
into a fitted `Strategy`: the artifact directory must match the sha256 recorded when the
model was registered (`abplatform.artifacts.verify_artifact`), then the two-tower kind
reads its embeddings, the ALS kind its factors and the EASE kind its item-item weights
(NumPy only), a composite nesting two-towers loads their embeddings and refits the rest
(`strategies.composite`), and every other kind is refitted from its snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from abplatform.artifacts import ArtifactError, verify_artifact
from abplatform.storage.model_registry import ModelRecord, params_hash
from abplatform.strategy import Strategy

Loader = Callable[[Path], tuple[Strategy, dict[str, object]]]
"""artifact directory -> (fitted strategy, the kind and params its manifest records)."""


def _two_tower(path: Path) -> tuple[Strategy, dict[str, object]]:
    """The exported embeddings, served by NumPy (TensorFlow stays unimported)."""
    from strategies.two_tower.strategy import TwoTowerStrategy

    strategy = TwoTowerStrategy.from_artifact(path)
    return strategy, strategy.artifact.manifest


def _als(path: Path) -> tuple[Strategy, dict[str, object]]:
    """The exported factors, served by NumPy (implicit stays unimported)."""
    from strategies.als import AlsStrategy

    strategy = AlsStrategy.from_artifact(path)
    return strategy, strategy.artifact.manifest


def _ease(path: Path) -> tuple[Strategy, dict[str, object]]:
    """The exported item-item weights, served without refitting."""
    from strategies.ease import EaseStrategy

    strategy = EaseStrategy.from_artifact(path)
    return strategy, strategy.artifact.manifest


def _ranker(path: Path) -> tuple[Strategy, dict[str, object]]:
    """The exported deep-and-cross weights, served by NumPy (TensorFlow stays unimported)."""
    from strategies.ranker.strategy import RankerStrategy

    strategy = RankerStrategy.from_artifact(path)
    return strategy, strategy.artifact.manifest


def _composite(path: Path) -> tuple[Strategy, dict[str, object]]:
    """A composite nesting two-towers: its stages' NumPy artifacts, the rest refitted."""
    from strategies.composite import load_composite

    return load_composite(path)


def _snapshot(path: Path) -> tuple[Strategy, dict[str, object]]:
    """A cheap strategy refitted on the frozen history of its snapshot."""
    from strategies.snapshot import load_snapshot

    snapshot = load_snapshot(path)
    return snapshot.fit(), snapshot.manifest


_LOADERS: dict[str, Loader] = {
    "two_tower": _two_tower,
    "als": _als,
    "ease": _ease,
    "ranker": _ranker,
}
"""Kinds with their own artifact format; every other kind is a composite artifact when it
nests a TensorFlow kind, else a snapshot."""
OWN_FORMAT_KINDS = frozenset(_LOADERS)
"""The kinds a registered model of which is never a snapshot."""


def load_model(record: ModelRecord) -> Strategy:
    """The fitted strategy of a registered model, after checking its artifact's checksum.

    Raises `ArtifactMismatch` (path, expected and actual sha256) when the files changed,
    `ArtifactError` when the directory is missing or its manifest describes another kind
    or other params than the registry row.
    """
    from strategies.snapshot import needs_tensorflow

    path = verify_artifact(record.artifact_path, record.artifact_sha256)
    fallback = _composite if needs_tensorflow(record.kind, record.params) else _snapshot
    strategy, manifest = _LOADERS.get(record.kind, fallback)(path)
    kind = manifest.get("kind")
    params = manifest.get("params")
    if kind != record.kind or not isinstance(params, dict):
        raise ArtifactError(
            f"artifact {path} holds a {kind!r} model, but model {record.id} is "
            f"registered as {record.kind!r}"
        )
    if params_hash(record.kind, params) != record.params_hash:
        raise ArtifactError(
            f"artifact {path} was exported with other params than model {record.id} "
            f"records (params_hash {record.params_hash})"
        )
    return strategy
