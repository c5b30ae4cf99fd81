"""What each variant serves: its registered model, or (cheap strategies only) a fit at start.

One function for the API and the simulator, so a simulated run and a served experiment load
their strategies the same way:

- a variant whose strategy pins ``model: ID`` or ``model: latest`` serves that registered
  model, loaded from its artifact after the checksum is checked (NumPy only; a composite
  nesting a two-tower is one model whose artifact holds the two-tower's, see
  `strategies.composite`);
- a variant whose strategy is trained offline (``two_tower`` with TensorFlow, ``als`` with
  implicit, or a composite nesting one) and pins nothing serves ``latest``; with no serving
  model it is refused (`ModelRequired`), never trained inside a server;
- every other strategy without a pin is fitted on the catalogue's history, as before the
  registry existed, and serves without a model id.

A pinned model must be of the variant's kind, trained on the experiment's catalogue and with
the variant's parameters, and must not be retired.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from abplatform.artifacts import verify_artifact
from abplatform.config.loader import build_params
from abplatform.config.models import LATEST_MODEL, ExperimentConfig, VariantConfig
from abplatform.domain import InteractionLog
from abplatform.errors import AbplatformError, NotFoundError
from abplatform.storage.model_registry import (
    ModelRecord,
    ModelRefused,
    NoServingModel,
    params_hash,
    resolve,
)
from abplatform.strategy import Strategy
from strategies.fitting import (
    HistorySource,
    PlannedStrategy,
    StrategyPlan,
    fit_each,
    read_history,
    strategy_seed,
)
from strategies.snapshot import TRAINERS, needs_training, trained_kinds


class ModelRequired(AbplatformError):
    """A variant trained offline (TensorFlow, implicit) has no registered model to serve."""


@dataclass(frozen=True)
class ServedVariant:
    """A variant's strategy (None without one) and the registered model it came from."""

    strategy: Strategy | None
    model: ModelRecord | None = None  # None: fitted at start, or no strategy

    @property
    def model_id(self) -> int | None:
        """The id exposures of this variant record (None when fitted at start)."""
        return self.model.id if self.model is not None else None


def normalised_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A strategy's parameters with their defaults, as `train` registers them."""
    return build_params(kind, params).model_dump(mode="json")


def _pin(variant: VariantConfig) -> int | str | None:
    """The model a variant serves: its ``model:``, else ``latest`` if it needs training."""
    spec = variant.strategy
    if spec is None:
        return None
    if spec.model is not None:
        return spec.model
    if needs_training(spec.kind, normalised_params(spec.kind, spec.params)):
        return LATEST_MODEL
    return None


def resolve_models(
    session: Session, config: ExperimentConfig, catalog: str
) -> dict[str, ModelRecord]:
    """{variant: registered model} for the variants that serve one (see the module notes).

    Raises `ModelRequired` (naming the variant and what to run) for a trained variant
    with nothing serving, `ModelRefused` for a pin of another kind, catalogue, parameters or
    a retired model, and NotFoundError for an unknown id. Artifacts are not read here.
    """
    out: dict[str, ModelRecord] = {}
    for variant in config.variants:
        pin = _pin(variant)
        if pin is None or variant.strategy is None:
            continue
        spec = variant.strategy
        try:
            record = resolve(session, config.key, variant.key, pin, kind=spec.kind, catalog=catalog)
        except NotFoundError as exc:  # a pinned id that was never registered
            raise ModelRefused(
                f"variant {variant.key!r} of experiment {config.key!r} pins model {pin}, "
                "which is not registered",
                hint="abplatform models list --experiment KEY shows the registered ids",
            ) from exc
        except NoServingModel as exc:
            if spec.model is None:  # implicit `latest` of a trained strategy
                kinds = trained_kinds(spec.kind, normalised_params(spec.kind, spec.params))
                trainer = " and ".join(sorted({TRAINERS[k] for k in kinds}))
                raise ModelRequired(
                    f"variant {variant.key!r} of experiment {config.key!r} serves "
                    f"{spec.kind!r}, which is trained with {trainer} and never fitted "
                    "at start, and no model of it is serving",
                    hint="run `abplatform train FILE`, then `abplatform models promote "
                    "ID` (or pin one with `model: ID` in the variant's strategy)",
                ) from exc
            raise
        expected = params_hash(spec.kind, normalised_params(spec.kind, spec.params))
        if record.params_hash != expected:
            raise ModelRefused(
                f"variant {variant.key!r} of experiment {config.key!r} pins model "
                f"{record.id}, trained with other params than the variant's: "
                f"{record.params} vs {normalised_params(spec.kind, spec.params)}",
                hint="pin a model trained from this YAML, or train one (abplatform train FILE)",
            )
        out[variant.key] = record
    return out


def check_servable(
    session: Session, config: ExperimentConfig, catalog: str
) -> dict[str, ModelRecord]:
    """`resolve_models`, then every resolved model's artifact checked against its sha256.

    What `POST /start` runs before it changes anything: a missing or changed artifact
    raises `ArtifactError` / `ArtifactMismatch` naming its path and expected checksum.
    """
    models = resolve_models(session, config, catalog)
    for record in models.values():
        verify_artifact(record.artifact_path, record.artifact_sha256)
    return models


def serve_variants(
    session: Session,
    config: ExperimentConfig,
    catalog: str,
    *,
    history: HistorySource | None = None,
    seed: int | None = None,
) -> dict[str, ServedVariant]:
    """Every variant's served strategy, in variant order (see the module notes).

    Registered models are loaded from their artifacts (checksums checked first: a changed
    or missing file raises `ArtifactMismatch` / `ArtifactError` naming it); the others are
    fitted on `history` (default: the catalogue's history, read in `session`) with `seed`
    (`strategy_seed` when None).
    """
    from strategies.registered import load_model

    models = resolve_models(session, config, catalog)
    served: dict[str, ServedVariant] = {v.key: ServedVariant(None) for v in config.variants}
    for key, record in models.items():
        served[key] = ServedVariant(load_model(record), record)
    to_fit = StrategyPlan(
        tuple(
            PlannedStrategy(v.key, "variant", v.strategy.kind, dict(v.strategy.params))
            for v in config.variants
            if v.strategy is not None and v.key not in models
        )
    )
    if to_fit.strategies:
        source = history if history is not None else session.connection()
        log: InteractionLog = read_history(source, catalog)
        for fitted in fit_each(to_fit, log, seed=strategy_seed(config, seed)):
            served[fitted.planned.name] = ServedVariant(fitted.strategy)
    return served


def switch_model(session: Session, model_id: int, status: str) -> ModelRecord:
    """Promote (``serving``) or retire (``retired``) a model; its experiment reloads at commit.

    When the model's experiment is running, what it would serve afterwards is checked in
    the same transaction (`check_servable`): a retire that would leave a variant with
    nothing to serve (e.g. the model it pins, or the only serving one of a ``latest``) is
    refused with `ModelRefused` and nothing changes. Every server process then reloads
    the experiment's strategies, one switch per experiment at a time.
    """
    from abplatform.storage.model_registry import promote, retire
    from abplatform.storage.repository import get_experiment, touch_experiment

    record = promote(session, model_id) if status == "serving" else retire(session, model_id)
    stored = touch_experiment(session, record.experiment)
    if stored is not None and stored.status == "running":
        try:
            check_servable(session, get_experiment(session, stored.key).config, stored.catalog)
        except AbplatformError as exc:
            raise ModelRefused(
                f"model {record.id} cannot be made {status}: running experiment "
                f"{stored.key!r} would not be servable: {exc.message}",
                hint=f"stop the experiment first (POST /v1/experiments/{stored.key}/stop), "
                "or pin another model",
            ) from exc
    return record
