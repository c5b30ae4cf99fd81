"""Commands over the model registry: models list, show, promote, retire, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from abplatform.cli.base import DbOption, app, fail, make_console, open_db, run_verb

if TYPE_CHECKING:
    from abplatform.storage.model_registry import ModelRecord

models_app = typer.Typer(
    help="Registered models: what `train` exported, their versions and status.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

ModelId = Annotated[int, typer.Argument(min=1, help="The model id (see `abplatform models list`).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, allow_nan=False))


@models_app.command("list")
def models_list(
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="Only this experiment's models.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Registered models by experiment, variant and version."""
    from rich.table import Table

    from abplatform.storage.db import transaction
    from abplatform.storage.model_registry import list_models

    with transaction(open_db(db)) as session:
        records = run_verb(lambda: list_models(session, experiment))
    if as_json:
        _print_json({"models": [r.to_dict() for r in records]})
        return
    if not records:
        where = f" of experiment {experiment!r}" if experiment else ""
        make_console(stderr=True).print(
            f"no registered models{where}; run `abplatform train FILE`", markup=False
        )
        return
    table = Table(title="Registered models")
    for column in ("id", "experiment", "variant", "version", "kind", "status", "catalog"):
        table.add_column(column, justify="right" if column in ("id", "version") else "left")
    table.add_column("history cut-off")
    table.add_column("created")
    for r in records:
        cutoff = r.history_cutoff.isoformat(sep=" ") if r.history_cutoff else "-"
        table.add_row(
            str(r.id), r.experiment, r.variant, str(r.version), r.kind, r.status, r.catalog,
            cutoff, r.created_at.isoformat(sep=" ", timespec="seconds"),
        )  # fmt: skip
    make_console().print(table)


def _show(record: ModelRecord) -> None:
    """Every field of a model, one per line, then its metrics."""
    console = make_console()
    document = record.to_dict()
    metrics = document.pop("metrics")
    width = max(len(name) for name in document)
    for name, value in document.items():
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        console.print(f"{name:<{width}}  {'-' if shown is None else shown}", markup=False)
    console.print("metrics" + ("" if metrics else f"{'':<{width - 5}}(none)"), markup=False)
    for name, value in metrics.items():
        console.print(f"  {name:<{width}}{value:.4f}", markup=False)


@models_app.command("show")
def models_show(model_id: ModelId, db: DbOption = None, as_json: JsonOption = False) -> None:
    """One model: everything the registry holds, metrics, artifact path and sha256."""
    from abplatform.storage.db import transaction
    from abplatform.storage.model_registry import get_model

    with transaction(open_db(db)) as session:
        record = run_verb(lambda: get_model(session, model_id))
    if as_json:
        _print_json(record.to_dict())
    else:
        _show(record)


@models_app.command("promote")
def models_promote(model_id: ModelId, db: DbOption = None) -> None:
    """Make a model `serving` (what `model: latest` resolves to); its artifact is checked."""
    from abplatform.storage.db import transaction
    from strategies.served import switch_model

    with transaction(open_db(db)) as session:
        record = run_verb(lambda: switch_model(session, model_id, "serving"))
    print(f"model {record.id} ({record.experiment}/{record.variant} v{record.version}) is serving")


@models_app.command("retire")
def models_retire(model_id: ModelId, db: DbOption = None) -> None:
    """Retire a model for good: it is neither served nor promoted again."""
    from abplatform.storage.db import transaction
    from strategies.served import switch_model

    with transaction(open_db(db)) as session:
        record = run_verb(lambda: switch_model(session, model_id, "retired"))
    print(f"model {record.id} ({record.experiment}/{record.variant} v{record.version}) is retired")


EXPORT_FORMATS = ("saved_model",)


@models_app.command("export")
def models_export(
    model_id: ModelId,
    out: Annotated[Path, typer.Argument(help="TensorFlow Serving's model base directory.")],
    export_format: Annotated[
        str, typer.Option("--format", help="Export format: saved_model.")
    ] = "saved_model",
    k: Annotated[
        int, typer.Option("--k", help="Items per answer (capped at the catalogue).")
    ] = 100,
    model_name: Annotated[
        str, typer.Option("--model-name", help="The model's name in TensorFlow Serving.")
    ] = "two_tower",
    db: DbOption = None,
) -> None:
    """Export a registered two-tower model as a TensorFlow SavedModel: OUT/MODEL_NAME/<version>."""
    if export_format not in EXPORT_FORMATS:
        fail(f"unknown --format {export_format!r}", hint=f"use {', '.join(EXPORT_FORMATS)}")
    if k < 1:
        fail(f"--k must be a positive integer (got {k})", hint="e.g. --k 100")
    from abplatform.artifacts import verify_artifact
    from abplatform.storage.db import transaction
    from abplatform.storage.model_registry import get_model

    with transaction(open_db(db)) as session:
        record = run_verb(lambda: get_model(session, model_id))
    if record.kind != "two_tower":
        fail(
            f"model {record.id} is a {record.kind!r} model: only two_tower models export "
            "as a SavedModel",
            hint="`abplatform models list` shows each model's kind",
        )
    run_verb(lambda: verify_artifact(record.artifact_path, record.artifact_sha256))
    from strategies.two_tower.saved_model import export_saved_model

    result = run_verb(
        lambda: export_saved_model(record.artifact_path, out, k=k, model_name=model_name)
    )
    print(result.path)
    make_console(stderr=True).print(
        f"SavedModel version {result.version} of {result.model_name!r} (top {result.k}) "
        f"from model {record.id} ({record.experiment}/{record.variant} v{record.version}); "
        f"inputs: {', '.join(f'{i.name} {i.dtype}{list(i.shape)}' for i in result.inputs)}",
        markup=False,
    )
