"""A real `abplatform serve` serves a trained two-tower model without loading TensorFlow."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.api.test_shutdown import _free_port, _serve
from tests.factories import cli
from tests.test_evaluate import _small_shop

CONFIG = (
    "key: small-shop\ncatalog: small\nvariants:\n"
    "  - {key: control, weight: 0.5, strategy: {kind: popularity}}\n"
    "  - {key: two_tower, weight: 0.5, strategy: {kind: two_tower, params: {epochs: 2}}}\n"
)


def _mapped_libraries(pid: int) -> str:
    """The file paths mapped into a process (shared libraries included)."""
    return Path(f"/proc/{pid}/maps").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_trained_two_tower_is_served_from_its_artifact_without_tensorflow(
    tmp_path: Path,
) -> None:
    items, interactions, config = _small_shop(tmp_path)
    config.write_text(CONFIG, encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    out = cli(
        "ingest", str(config), "--items", str(items), "--interactions", str(interactions),
        "--db", db,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr

    port = _free_port()
    server = _serve(db, port, 1, tmp_path / "journal")
    try:
        base = f"http://127.0.0.1:{port}"
        created = httpx.post(
            f"{base}/v1/experiments",
            content=CONFIG,
            headers={"content-type": "application/yaml"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        refused = httpx.post(f"{base}/v1/experiments/small-shop/start", timeout=30)
        assert refused.status_code == 409, refused.text
        assert "abplatform train FILE" in refused.json()["hint"]

        out = cli("train", str(config), "--db", db, "--artifacts", str(tmp_path / "a"), "--json")
        assert out.returncode == 0, out.stderr
        ids = {name: r["model_id"] for name, r in json.loads(out.stdout)["variants"].items()}
        assert cli("models", "promote", str(ids["two_tower"]), "--db", db).returncode == 0

        started = httpx.post(f"{base}/v1/experiments/small-shop/start", timeout=30)
        assert started.status_code == 200, started.text
        served: dict[str, list[str]] = {}
        for user in range(60):
            body = {"experiment": "small-shop", "unit_id": f"u{user}", "k": 5}
            answer = httpx.post(f"{base}/v1/assign", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            doc = answer.json()
            served[doc["variant"]] = [item["item_id"] for item in doc["items"]]
        assert set(served) == {"control", "two_tower"}
        assert len(served["two_tower"]) == 5

        worker = int(httpx.get(f"{base}/readyz", timeout=5).json()["process"])
        maps = _mapped_libraries(worker)
        assert "libtensorflow" not in maps and "_pywrap_tensorflow" not in maps
        assert "numpy" in maps  # the check reads real mappings: NumPy's own libraries
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
