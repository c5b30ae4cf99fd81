"""The versioned two-tower artifact: export to and load from a directory, NumPy only.

Layout of ``<root>/<experiment>/<variant>/<version>/`` (version = UTC time + content hash)::

    manifest.json          format, version, params, seed, data range, training, metrics,
                           library versions, sha256 of every file below
    items.npz              the catalogue: item_ids, categories, brands, prices (, tags)
    item_embeddings.npy    (items, D) float32, quantised (see serving.quantize); float16 or
                           int8 codes with the `embedding_dtype` param (see compression)
    item_embedding_scales.npy  (D,) float32 per-dimension scales of int8 codes (int8 only)
    user_ids.npy           (users,) known users (with a stored embedding), sorted
    user_embeddings.npy    (users, D) float32, quantised, from each user's latest history
    purchased.npz          indptr, items: what each known user bought (exclude_purchased)
    default_embedding.npy  (D,) the vector of an unseen user with no history
    user_tower.npz         the user tower's weights for the NumPy forward pass (absent
                           when the strategy fell back to popularity)

``<root>/<experiment>/<variant>/LATEST`` names the newest version. A version is written
into a hidden temporary directory and renamed into place, so readers never see half of one.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# One ArtifactError for every kind of artifact (`abplatform.artifacts`), still importable here.
from abplatform.artifacts import (
    LATEST,
    MANIFEST,
    ArtifactError,
    file_sha256,
    library_versions,
    write_version,
)
from abplatform.domain import Catalog
from strategies.two_tower.compression import CompressedEmbeddings, compress, decompress, of_stored
from strategies.two_tower.data import UserFeatureEncoder
from strategies.two_tower.numpy_tower import UserTowerWeights

FORMAT = "abplatform.two_tower"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TwoTowerArtifact:
    """Everything needed to serve two-tower slates without TensorFlow."""

    catalog: Catalog
    item_embeddings: npt.NDArray[np.float32]
    user_ids: npt.NDArray[np.str_]
    user_embeddings: npt.NDArray[np.float32]
    purchased_indptr: npt.NDArray[np.int64]
    purchased_items: npt.NDArray[np.int64]
    default_embedding: npt.NDArray[np.float32]
    user_tower: UserTowerWeights | None
    feature_encoder: UserFeatureEncoder
    manifest: dict[str, Any]
    # How the item embeddings are stored (None: float32, as `item_embeddings`); the served
    # `item_embeddings` are then exactly `compression.decompress(item_storage)`.
    item_storage: CompressedEmbeddings | None = None

    @property
    def dim(self) -> int:
        """Embedding size."""
        return int(self.item_embeddings.shape[1])

    def purchased(self, user_row: int) -> npt.NDArray[np.int64]:
        """Item indices bought by known user number `user_row`."""
        return self.purchased_items[
            self.purchased_indptr[user_row] : self.purchased_indptr[user_row + 1]
        ]

    def stored_items(self) -> CompressedEmbeddings:
        """The item embeddings as the artifact stores them."""
        if self.item_storage is not None:
            return self.item_storage
        return CompressedEmbeddings("float32", self.item_embeddings)

    def with_manifest(self, **entries: Any) -> TwoTowerArtifact:
        """A copy whose manifest has `entries` added or replaced."""
        return replace(self, manifest={**self.manifest, **entries})


def compressed(artifact: TwoTowerArtifact, dtype: str) -> TwoTowerArtifact:
    """`artifact` with its item embeddings stored in `dtype` (see `compression`).

    The served `item_embeddings` become the dequantised codes, exactly what a reload of the
    exported artifact serves; float32 leaves the artifact unchanged.
    """
    if dtype == "float32":
        return artifact
    stored = compress(artifact.item_embeddings, dtype)
    return replace(artifact, item_embeddings=decompress(stored), item_storage=stored)


def _arrays(artifact: TwoTowerArtifact) -> dict[str, dict[str, npt.NDArray[Any]]]:
    """File name -> arrays stored in it (a single array is stored under the key "")."""
    catalog = artifact.catalog
    files: dict[str, dict[str, npt.NDArray[Any]]] = {
        "items.npz": {
            "item_ids": catalog.item_ids.astype(str),
            "categories": catalog.categories.astype(str),
            "brands": catalog.brands.astype(str),
            "prices": catalog.prices.astype(np.float64),
            **({} if catalog.tags is None else {"tags": catalog.tags.astype(str)}),
        },
        "item_embeddings.npy": {"": artifact.stored_items().codes},
        "user_ids.npy": {"": artifact.user_ids.astype(str)},
        "user_embeddings.npy": {"": artifact.user_embeddings},
        "purchased.npz": {
            "indptr": artifact.purchased_indptr,
            "items": artifact.purchased_items,
        },
        "default_embedding.npy": {"": artifact.default_embedding},
    }
    tower = artifact.user_tower
    if tower is not None:
        weights = {
            "vocabulary": tower.vocabulary.astype(str),
            "user_table": tower.user_table,
            "item_table": tower.item_table,
            "category_table": tower.category_table,
            "brand_table": tower.brand_table,
            "item_categories": tower.item_categories,
            "item_brands": tower.item_brands,
            "tag_table": tower.tag_table,
            "item_tags": tower.item_tags,
        }
        weights.update({f"feature_{j}": t for j, t in enumerate(tower.feature_tables)})
        weights.update({f"kernel_{i}": w for i, w in enumerate(tower.kernels)})
        weights.update({f"bias_{i}": b for i, b in enumerate(tower.biases)})
        files["user_tower.npz"] = weights
    scales = artifact.stored_items().scales
    if scales is not None:
        files["item_embedding_scales.npy"] = {"": scales}
    return files


def export_artifact(
    artifact: TwoTowerArtifact,
    root: str | Path,
    *,
    experiment: str,
    variant: str,
    metrics: Mapping[str, float] | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """Write a new version of the artifact under ``root/experiment/variant``.

    Parameters
    ----------
    artifact
        The fitted strategy's artifact.
    root
        The artifacts directory.
    experiment, variant
        Where the version goes (and recorded in the manifest).
    metrics
        Offline metrics to record in the manifest.
    now
        Creation time (UTC); defaults to the current time.

    Returns
    -------
    pathlib.Path
        The new version directory; ``LATEST`` next to it names it.
    """
    files = _arrays(artifact)
    params = artifact.manifest.get("params")
    stored = artifact.stored_items()
    manifest = {
        **artifact.manifest,
        # Only a compressed artifact says so: a float32 one stays byte for byte as before.
        **({} if stored.dtype == "float32" else {"item_embeddings": stored.manifest_entry()}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "experiment": experiment,
        "variant": variant,
        "metrics": dict(metrics or artifact.manifest.get("metrics") or {}),
        "libraries": library_versions(),
    }
    return write_version(
        root,
        experiment=experiment,
        variant=variant,
        files=files,
        head=json.dumps(params, sort_keys=True, default=str).encode(),
        manifest=manifest,
        now=now,
    )


def resolve_version(path: str | Path) -> Path:
    """The version directory of `path`: itself, or the one a variant directory's LATEST names."""
    directory = Path(path)
    if (directory / MANIFEST).is_file():
        return directory
    pointer = directory / LATEST
    if pointer.is_file():
        chosen = directory / pointer.read_text(encoding="utf-8").strip()
        if (chosen / MANIFEST).is_file():
            return chosen
        raise ArtifactError(f"{pointer} names {chosen.name!r}, which has no {MANIFEST}")
    raise ArtifactError(
        f"{directory} is not a two-tower artifact (no {MANIFEST} or {LATEST})",
        hint="pass a version directory <artifacts>/<experiment>/<variant>/<version> "
        "or its variant directory",
    )


def load_artifact(path: str | Path, *, verify: bool = True) -> TwoTowerArtifact:
    """Load an artifact directory (a version, or a variant directory through LATEST).

    Parameters
    ----------
    path
        A version directory, or a variant directory whose ``LATEST`` names one.
    verify
        Check every file's sha256 against the manifest.

    Returns
    -------
    TwoTowerArtifact
        The arrays and the manifest; nothing of TensorFlow is needed.

    Raises
    ------
    ArtifactError
        If the directory is not an artifact, a file is missing or corrupted, or the format
        version is not this code's.
    """
    directory = resolve_version(path)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {directory / MANIFEST}: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} holds format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r}; expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    checksums: dict[str, str] = manifest.get("files", {})
    arrays: dict[str, Any] = {}
    for name, expected in checksums.items():
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing")
        if verify and file_sha256(file) != expected:
            raise ArtifactError(f"{file} does not match its checksum in the manifest")
        loaded = np.load(file, allow_pickle=False)
        arrays[name] = dict(loaded.items()) if name.endswith(".npz") else loaded
    for required in (
        "items.npz",
        "item_embeddings.npy",
        "user_ids.npy",
        "user_embeddings.npy",
        "purchased.npz",
        "default_embedding.npy",
    ):
        if required not in arrays:
            raise ArtifactError(f"{directory} has no {required} in its manifest")
    items = arrays["items.npz"]
    try:
        storage = of_stored(
            manifest.get("item_embeddings", {}).get("dtype"),
            arrays["item_embeddings.npy"],
            arrays.get("item_embedding_scales.npy"),
        )
        # float32 is served as stored (bit for bit what artifacts written before served).
        item_embeddings: npt.NDArray[np.float32] = (
            arrays["item_embeddings.npy"] if storage.dtype == "float32" else decompress(storage)
        )
    except ValueError as exc:
        raise ArtifactError(f"{directory}: {exc}") from None
    tower = None
    if "user_tower.npz" in arrays:
        weights = arrays["user_tower.npz"]
        count = sum(1 for key in weights if key.startswith("kernel_"))
        features = sum(1 for key in weights if key.startswith("feature_"))
        tower = UserTowerWeights(
            vocabulary=weights["vocabulary"],
            user_table=weights["user_table"],
            item_table=weights["item_table"],
            category_table=weights["category_table"],
            brand_table=weights["brand_table"],
            item_categories=weights["item_categories"],
            item_brands=weights["item_brands"],
            feature_tables=tuple(weights[f"feature_{j}"] for j in range(features)),
            kernels=tuple(weights[f"kernel_{i}"] for i in range(count)),
            biases=tuple(weights[f"bias_{i}"] for i in range(count)),
            **{key: weights[key] for key in ("tag_table", "item_tags") if key in weights},
        )
    return TwoTowerArtifact(
        catalog=Catalog(
            item_ids=items["item_ids"],
            categories=items["categories"],
            brands=items["brands"],
            prices=items["prices"],
            tags=items.get("tags"),
        ),
        item_embeddings=item_embeddings,
        user_ids=arrays["user_ids.npy"],
        user_embeddings=arrays["user_embeddings.npy"],
        purchased_indptr=arrays["purchased.npz"]["indptr"],
        purchased_items=arrays["purchased.npz"]["items"],
        default_embedding=arrays["default_embedding.npy"],
        user_tower=tower,
        feature_encoder=UserFeatureEncoder.from_json(manifest.get("user_features", {})),
        manifest=manifest,
        item_storage=None if storage.dtype == "float32" else storage,
    )
