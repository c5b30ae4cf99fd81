"""Composite artifacts: a pipeline, re-ranker or router nesting a two-tower is exported as
one artifact (the two-towers' exports + a snapshot) and served again without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from abplatform.artifacts import ArtifactError, ArtifactMismatch, artifact_sha256
from abplatform.registry import build_strategy
from strategies.composite import export_composite, load_composite, tensorflow_stages
from strategies.registered import load_model
from tests.strategies.test_contract import TINY_TOWER, requests
from tests.strategies.test_snapshot import ROOT, SEED, _history, _record

PIPELINE = {
    "retrieve": [
        {"kind": "two_tower", "n": 15, "params": TINY_TOWER},
        {"kind": "popularity", "n": 5},
    ],
    "rank": {"kind": "two_tower", "params": TINY_TOWER},
    "rerank": {"kind": "diversity_rerank", "params": {"lambda": 0.3}},
}
COMPOSITES = [
    pytest.param("pipeline", PIPELINE, id="pipeline"),
    pytest.param(
        "diversity_rerank",
        {"base": {"kind": "two_tower", "params": TINY_TOWER}, "lambda": 0.5, "candidates": 20},
        id="diversity_rerank",
    ),
    pytest.param(
        "scene_router",
        {
            "strategies": {
                "tower": {"kind": "two_tower", "params": TINY_TOWER},
                "mixed": {"kind": "pipeline", "params": PIPELINE},
                "pop": {"kind": "popularity"},
            },
            "routes": {"home_page": "tower", "product_detail": "mixed"},
            "default": "pop",
        },
        id="scene_router",
    ),
]


def _export(kind: str, params: dict[str, Any], root: Path) -> tuple[Any, Path, dict[str, Any]]:
    history = _history()
    fitted = build_strategy(kind, params, seed=SEED)
    fitted.fit(history)
    validated = fitted.Params.model_validate(params).model_dump(mode="json")
    path = export_composite(
        root,
        experiment="exp",
        variant="v",
        strategy=fitted,
        params=validated,
        history=history,
        metrics={"hit@10": 0.25},
    )
    return fitted, path, validated


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "params"), COMPOSITES)
def test_a_loaded_composite_serves_the_fitted_slates(
    kind: str, params: dict[str, Any], tmp_path: Path
) -> None:
    fitted, path, validated = _export(kind, params, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "abplatform.composite" and manifest["kind"] == kind
    # One two-tower (kind + params) is one stage, however many times it is nested.
    (key,) = manifest["stages"]
    assert manifest["stages"][key]["kind"] == "two_tower"
    assert (path / "stages" / key / "manifest.json").is_file()
    assert set(tensorflow_stages(fitted)) == {key}
    served = load_model(_record(kind, validated, path))
    sample = requests(_history())
    for k in (1, 6, 10):
        assert served.recommend_batch(sample, k) == fitted.recommend_batch(sample, k)


@pytest.mark.slow
def test_a_changed_stage_file_is_refused_and_serving_never_imports_tensorflow(
    tmp_path: Path,
) -> None:
    _, path, validated = _export("pipeline", PIPELINE, tmp_path)
    record = _record("pipeline", validated, path)
    code = f"""
        import json, sys
        from datetime import datetime
        from abplatform.domain import RecRequest
        from abplatform.storage.model_registry import ModelRecord
        from strategies.registered import load_model

        doc = json.loads({json.dumps(record.to_dict())!r})
        for name in ("history_cutoff", "created_at", "status_changed_at"):
            doc[name] = datetime.fromisoformat(doc[name]) if doc[name] else None
        slate = load_model(ModelRecord(**doc)).recommend(RecRequest("user-1"), 5)
        assert len(set(slate.items)) == 5 and set(slate.sources) <= {{"two_tower", "popularity"}}
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"

    stage = next((path / "stages").rglob("item_embeddings.npy"))
    stage.write_bytes(stage.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactMismatch):
        load_model(record)
    # Loaded directly, the composite's own manifest names the changed file.
    with pytest.raises(ArtifactError, match=r"item_embeddings\.npy does not match its checksum"):
        load_composite(path)
    assert artifact_sha256(path) != record.artifact_sha256


@pytest.mark.slow
def test_params_nesting_a_stage_the_artifact_lacks_are_refused(tmp_path: Path) -> None:
    _, path, _ = _export("pipeline", PIPELINE, tmp_path)
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    other = {**TINY_TOWER, "embedding_dim": 16}
    manifest["params"]["rank"] = {"kind": "two_tower", "params": other}
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="nest TensorFlow stages two_tower-"):
        load_composite(path)
