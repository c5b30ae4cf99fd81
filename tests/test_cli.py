"""The real `abplatform` command line, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from abplatform.registry import strategies
from abplatform.storage.db import head_revision
from tests.factories import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "homepage_popularity.yaml"


def test_import_is_light() -> None:
    code = (
        "import sys, abplatform, abplatform.cli; "
        "heavy = [m for m in ('tensorflow', 'implicit', 'numpy', 'scipy', 'sqlalchemy', 'pandas') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_lists_commands() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for command in ("validate", "simulate", "analyze", "report", "ingest", "db", "models"):
        assert command in out.stdout


def test_validate_ok() -> None:
    out = cli("validate", str(EXAMPLE))
    assert out.returncode == 0, out.stderr
    assert "ok (2 variants, 4 metrics)" in out.stdout


def test_validate_bad_file_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "key: x\nvariants:\n  - {key: a, weight: 0.7, strategy: {kind: nope}}\n"
        "  - {key: a, weight: 0.7}\n"
    )
    out = cli("validate", str(bad))
    known = ", ".join(strategies.names())
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == f"error: {bad}: 3 problems in the experiment config"
    assert lines[1:] == [
        "variants: weights must sum to 1 (they sum to 1.4) (got [0.7, 0.7])",
        f"variants.0.strategy.kind: unknown strategy kind; known: {known} (got 'nope')",
        "variants.1.key: duplicate variant key (got 'a')",
    ]


def test_validate_deeply_nested_yaml_exits_2_naming_where(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("key: x\nvariants: " + "[" * 500 + "]" * 500 + "\n")  # about 1 KB
    out = cli("validate", str(deep))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[1:] == [
        "yaml: nested deeper than 32 levels at line 2, column 42"
    ]


def test_validate_malformed_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("key: x\nvariants: [\n  {key: a\n")
    out = cli("validate", str(bad))
    assert out.returncode == 2
    assert "yaml: malformed YAML at line" in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    out = cli("validate", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2
    assert "cannot read" in out.stderr and "No such file" in out.stderr


def test_analyze_unknown_experiment(tmp_path: Path) -> None:
    out = cli("analyze", "no_such_experiment", db=f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 2
    assert "no experiment 'no_such_experiment' in this database" in out.stderr
    assert "Traceback" not in out.stderr


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    out = cli("db", "upgrade", "--db", url)
    assert out.returncode == 0, out.stderr
    head = head_revision()
    assert f"at revision {head}" in out.stdout
    assert cli("db", "current", "--db", url).stdout.strip() == head


def test_simulate_analyze_report_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/e2e.db"
    report = tmp_path / "report.html"
    out = cli(
        "simulate",
        str(EXAMPLE),
        "--db",
        url,
        "--users",
        "1500",
        "--seed",
        "5",
        "--report",
        str(report),
    )
    assert out.returncode == 0, out.stderr
    assert "Ground truth" in out.stdout
    assert report.read_text().startswith("<!DOCTYPE html>")
    analysis = cli("analyze", "homepage_popularity", "--db", url, "--json")
    assert analysis.returncode == 0, analysis.stderr
    result = json.loads(analysis.stdout)
    assert result["experiment"] == "homepage_popularity"
    assert set(result["srm"]) >= {"p_value", "mismatch"}
    assert [m["metric"] for m in result["metrics"]] == [
        "purchase_rate",
        "revenue_per_user",
        "clicks_per_user",
        "ctr",
    ]
    for metric in result["metrics"]:
        assert metric["ground_truth"] is not None
        assert {v["variant"] for v in metric["variants"]} == {"control", "treatment"}
        (comparison,) = metric["comparisons"]
        assert comparison["baseline"] == "control"
        assert set(comparison) >= {"diff", "diff_ci", "rel_lift", "rel_lift_ci", "p_value"}
    table = cli("analyze", "homepage_popularity", "--db", url)
    assert table.returncode == 0 and "ctr" in table.stdout
    listing = cli("list", "--db", url)
    assert "homepage_popularity" in listing.stdout


def test_train_prints_offline_metrics_and_writes_a_report(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/train.db"
    experiment = tmp_path / "small.yaml"
    experiment.write_text(
        "key: train_small\n"
        "variants:\n"
        "  - {key: a, weight: 0.5, strategy: {kind: popularity}}\n"
        "  - {key: b, weight: 0.5, strategy: {kind: popularity, params: {per_category: true}}}\n"
        "simulation: {users: 300, days: 1, items: 100, slate_size: 5, seed: 2}\n"
    )
    assert cli("simulate", str(experiment), "--db", url).returncode == 0
    out = cli("train", str(experiment), "--db", url, "--artifacts", str(tmp_path / "art"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    names = set(report["variants"])
    assert {"a", "b", "baseline:popularity", "baseline:random"} <= names
    assert (tmp_path / "art" / "train_small" / "train_report.json").exists()
    # `simulate` registered and served models 1 and 2 (version 1 of each variant).
    assert {report["variants"][v]["model_id"] for v in ("a", "b")} == {3, 4}
    for variant in ("a", "b"):
        assert report["variants"][variant]["version"] == 2
    assert report["variants"]["baseline:random"]["model_id"] is None
    assert report["unregistered"] == {}


def test_models_list_show_promote_retire(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/models.db"
    experiment = tmp_path / "small.yaml"
    experiment.write_text(
        "key: reg_small\n"
        "variants:\n"
        "  - {key: a, weight: 0.5, strategy: {kind: popularity}}\n"
        "  - {key: b, weight: 0.5, strategy: {kind: random}}\n"
        "simulation: {users: 200, days: 1, items: 60, slate_size: 5, seed: 3}\n"
    )
    assert cli("simulate", str(experiment), "--db", url).returncode == 0
    artifacts = tmp_path / "art"
    trained = cli("train", str(experiment), "--db", url, "--artifacts", str(artifacts))
    assert trained.returncode == 0, trained.stderr
    assert "model id (version)" in trained.stdout
    # `simulate` registered (and served) models 1 and 2, version 1 of each variant.
    assert "registered candidates: a = model 3 (v2), b = model 4 (v2)" in trained.stderr
    again = cli("train", str(experiment), "--db", url, "--artifacts", str(artifacts), "--json")
    retrained = json.loads(again.stdout)["variants"]
    assert [retrained[v]["model_id"] for v in ("a", "b")] == [5, 6]  # versions 3

    listed = cli("models", "list", "--db", url, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["models"]
    assert [(r["id"], r["variant"], r["version"]) for r in rows] == [
        (1, "a", 1), (3, "a", 2), (5, "a", 3), (2, "b", 1), (4, "b", 2), (6, "b", 3),
    ]  # fmt: skip
    table = cli("models", "list", "--experiment", "reg_small", "--db", url)
    assert table.returncode == 0 and "candidate" in table.stdout and "random" in table.stdout
    assert (
        "no registered models of experiment 'nope'"
        in cli("models", "list", "--experiment", "nope", "--db", url).stderr
    )

    shown = json.loads(cli("models", "show", "3", "--db", url, "--json").stdout)
    assert shown["kind"] == "popularity" and shown["status"] == "candidate"
    assert Path(shown["artifact_path"]).is_relative_to(artifacts.resolve())
    assert "hit@10" in shown["metrics"]
    text = cli("models", "show", "3", "--db", url).stdout
    for part in (shown["artifact_path"], shown["artifact_sha256"], "metrics", "hit@10"):
        assert part in text

    promoted = cli("models", "promote", "3", "--db", url)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == "model 3 (reg_small/a v2) is serving"
    assert cli("models", "retire", "3", "--db", url).stdout.strip() == (
        "model 3 (reg_small/a v2) is retired"
    )
    refused = cli("models", "promote", "3", "--db", url)
    assert refused.returncode == 2
    assert "error: model 3 (reg_small/a v2) is retired and cannot be promoted" in refused.stderr
    for verb in ("show", "promote", "retire"):
        unknown = cli("models", verb, "77", "--db", url)
        assert unknown.returncode == 2, verb
        assert "no model 77 in this database" in unknown.stderr
        assert "Traceback" not in unknown.stderr
