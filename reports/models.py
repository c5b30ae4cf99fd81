"""Which registered model versions served each variant; a per-version breakdown if several did.

Every exposure records the model that served its slate (`exposures.model_id`, NULL when the
strategy was fitted at start). A variant served by more than one model version mixes them in
its metrics: it gets a warning and a breakdown of its units by the version that served their
first exposure, with each metric's mean over those units (`reports.aggregate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from abplatform.config.models import ExperimentConfig
from abplatform.storage.model_registry import ModelRecord, get_models
from reports.aggregate import VersionStats, exposures_by_model, model_version_stats
from reports.capping import Cap
from reports.quantile_result import standard_metrics
from reports.results import FITTED_AT_START, ModelVersionBreakdown, ServedModel, VariantModels
from reports.stats import estimate

__all__ = ["model_label", "served_models"]


def model_label(model_id: int | None, record: ModelRecord | None) -> str:
    """``model 7 (v2)``; ``model 7`` when the registry no longer has it; ``fitted at start``."""
    if model_id is None:
        return FITTED_AT_START
    return f"model {model_id}" if record is None else f"model {model_id} (v{record.version})"


def served_models(
    session: Session,
    experiment_id: int,
    config: ExperimentConfig,
    alpha: float,
    caps: Sequence[Cap] = (),
    as_of: datetime | None = None,
) -> tuple[dict[str, VariantModels], list[str]]:
    """Per configured variant (config order), the models that served it; and the warnings.

    Variants without exposures map to no models. A variant served by more than one model
    version (a model switch, or fitted at start then a registered model) gets a warning
    and a `ModelVersionBreakdown` per version.
    """
    keys = [v.key for v in config.variants]
    rows = [r for r in exposures_by_model(session, experiment_id) if r.variant in keys]
    records = get_models(session, {r.model_id for r in rows if r.model_id is not None})
    by_variant: dict[str, list[ServedModel]] = {key: [] for key in keys}
    for r in rows:
        record = records.get(r.model_id) if r.model_id is not None else None
        by_variant[r.variant].append(
            ServedModel(
                model_id=r.model_id,
                version=None if record is None else record.version,
                kind=None if record is None else record.kind,
                status=None if record is None else record.status,
                label=model_label(r.model_id, record),
                exposures=r.exposures,
                units=r.units,
            )
        )
    mixed = [key for key in keys if len(by_variant[key]) > 1]
    summed = standard_metrics(config.metrics)  # quantiles have no per-version sums
    stats = model_version_stats(session, experiment_id, keys, summed, mixed, caps, as_of)
    out: dict[str, VariantModels] = {}
    warnings: list[str] = []
    for key in keys:
        served = tuple(by_variant[key])
        breakdown: tuple[ModelVersionBreakdown, ...] | None = None
        if key in mixed:
            breakdown = _breakdown(key, served, stats, config, alpha)
            labels = ", ".join(s.label for s in served)
            warnings.append(
                f"variant {key!r} was served by {len(served)} model versions ({labels}): its "
                "metrics mix them; see the per-version breakdown (models."
                f"{key}.breakdown)"
            )
        out[key] = VariantModels(key, served, breakdown)
    return out, warnings


def _breakdown(
    variant: str,
    served: Sequence[ServedModel],
    stats: dict[tuple[str, int | None], VersionStats],
    config: ExperimentConfig,
    alpha: float,
) -> tuple[ModelVersionBreakdown, ...]:
    """Units and metric means per version, in `served` order (0 units: means are None)."""
    out = []
    for model in served:
        enrolled = stats.get((variant, model.model_id))
        means = {
            metric.name: None
            if enrolled is None
            else estimate(enrolled.stats[metric.name], alpha).value
            for metric in standard_metrics(config.metrics)
        }
        units = 0 if enrolled is None else enrolled.units
        out.append(ModelVersionBreakdown(model.model_id, model.version, model.label, units, means))
    return tuple(out)
