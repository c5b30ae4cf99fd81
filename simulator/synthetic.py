"""A synthetic experiment of any size written straight into SQL, without the world model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine

from abplatform.progress import Progress, no_progress
from abplatform.storage.exposure_ids import reserve_exposure_ids
from abplatform.storage.rows import (
    EventColumns,
    ExposureColumns,
    insert_events,
    insert_exposures,
)

T0 = 1_700_000_000
"""Unix seconds of the earliest possible first exposure."""

METRICS: Mapping[str, str] = {
    "conversion": "  - {name: conversion, type: proportion, event: purchase}",
    "clicks_per_user": "  - {name: clicks_per_user, type: mean, event: click}",
    "revenue_per_user": "  - {name: revenue_per_user, type: mean, event: purchase, value: sum}",
    "ctr": (
        "  - name: ctr\n"
        "    type: ratio\n"
        "    numerator: {event: click}\n"
        "    denominator: {event: impression}"
    ),
    "order_value": (
        "  - name: order_value\n"
        "    type: ratio\n"
        "    numerator: {event: purchase, value: sum}\n"
        "    denominator: {event: purchase}"
    ),
}
"""The metrics a synthetic experiment can be analysed on, as experiment YAML, by name."""


def experiment_yaml(
    key: str,
    variants: Mapping[str, float],
    *,
    description: str | None = None,
    metrics: Sequence[str] = tuple(METRICS),
    analysis: str | None = None,
) -> str:
    """Experiment YAML of `variants` (key -> weight) analysed on the named `METRICS`.

    `analysis` is the indented body of an `analysis:` section, left out when None.
    """
    lines = [f"key: {key}"]
    if description is not None:
        lines.append(f"description: {description}")
    lines.append("variants:")
    lines += [f"  - {{key: {name}, weight: {weight}}}" for name, weight in variants.items()]
    lines.append("metrics:")
    lines += [METRICS[name] for name in metrics]
    if analysis is not None:
        lines += ["analysis:", analysis]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SyntheticVariant:
    """One variant: its share of units and its multiplier on the click rate."""

    key: str
    weight: float
    click_lift: float = 1.0


@dataclass(frozen=True)
class SyntheticSpec:
    """How the units of a synthetic experiment behave (ranges are inclusive, uniform).

    Each unit gets a variant by weight and a number of exposures in `exposures_per_unit`,
    each at a time in `exposure_seconds` after `T0` and with a slate of a size in
    `slate_sizes`. Clicks are Poisson(impressions x `click_rate` x the variant's lift),
    purchases Binomial(clicks, `purchase_rate`) with a LogNormal(3, 1) value rounded to
    cents (NULL for a `valueless_share` of them), each within `event_seconds` after the
    unit's first exposure. An `early_share` of units also clicks once, within
    `early_seconds` before its first exposure: the analysis must ignore that click.
    """

    variants: tuple[SyntheticVariant, ...] = (
        SyntheticVariant("control", 0.5),
        SyntheticVariant("treatment", 0.5, 1.1),
    )
    exposures_per_unit: tuple[int, int] = (1, 3)
    slate_sizes: tuple[int, int] = (5, 5)
    exposure_seconds: tuple[int, int] = (0, 7 * 86_400)
    click_rate: float = 0.03
    purchase_rate: float = 0.1
    valueless_share: float = 0.0
    early_share: float = 0.05
    event_seconds: int = 86_400
    early_seconds: int = 86_400
    chunk_units: int = 200_000

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("a synthetic experiment needs at least one variant, got none")
        ranges = {
            "exposures_per_unit": (self.exposures_per_unit, 1),
            "slate_sizes": (self.slate_sizes, 0),
            "exposure_seconds": (self.exposure_seconds, 0),
        }
        for name, ((low, high), least) in ranges.items():
            if not least <= low <= high:
                raise ValueError(
                    f"{name} must be (low, high), {least} <= low <= high; got {low, high}"
                )
        if self.event_seconds < 1 or self.early_seconds < 2:
            raise ValueError(
                "event_seconds must be >= 1 and early_seconds >= 2; "
                f"got {self.event_seconds} and {self.early_seconds}"
            )


@dataclass(frozen=True)
class SyntheticUnits:
    """What was written, per unit (in unit order): the truth the analysis should find."""

    variant: npt.NDArray[np.str_]
    impressions: npt.NDArray[np.float64]
    clicks: npt.NDArray[np.float64]
    purchases: npt.NDArray[np.float64]
    revenue: npt.NDArray[np.float64]
    exposures: int
    events: int

    def values(self, metric: str, variant: str) -> npt.NDArray[np.float64]:
        """Per-unit values of a mean or proportion metric of `METRICS` in one variant."""
        arrays = {
            "conversion": (self.purchases > 0).astype(np.float64),
            "clicks_per_user": self.clicks,
            "revenue_per_user": self.revenue,
        }
        if metric not in arrays:
            raise ValueError(f"metric must be one of {sorted(arrays)}, got {metric!r}")
        return np.asarray(arrays[metric][self.variant == variant], dtype=np.float64)


def unit_id(index: int) -> str:
    """The id of the synthetic experiment's unit number `index`."""
    return f"u{index:08d}"


def write_synthetic(
    engine: Engine,
    experiment_id: int,
    n_units: int,
    spec: SyntheticSpec,
    rng: np.random.Generator,
    progress: Progress = no_progress,
) -> SyntheticUnits:
    """Write `n_units` units' exposures and events; return what was drawn, as the truth.

    For benchmarks and tests of the analysis at volume: one transaction per chunk of
    units, and `progress("units", done, n_units)` is called after each chunk.
    """
    chunks: list[SyntheticUnits] = []
    for first in range(0, n_units, spec.chunk_units):
        n = min(spec.chunk_units, n_units - first)
        events_before = sum(c.events for c in chunks)
        chunks.append(_write_chunk(engine, experiment_id, first, n, spec, rng, events_before))
        progress("units", first + n, n_units)
    return SyntheticUnits(
        variant=np.concatenate([np.zeros(0, str), *(c.variant for c in chunks)]),
        impressions=np.concatenate([np.zeros(0), *(c.impressions for c in chunks)]),
        clicks=np.concatenate([np.zeros(0), *(c.clicks for c in chunks)]),
        purchases=np.concatenate([np.zeros(0), *(c.purchases for c in chunks)]),
        revenue=np.concatenate([np.zeros(0), *(c.revenue for c in chunks)]),
        exposures=sum(c.exposures for c in chunks),
        events=sum(c.events for c in chunks),
    )


def _write_chunk(
    engine: Engine,
    experiment_id: int,
    first: int,
    n: int,
    spec: SyntheticSpec,
    rng: np.random.Generator,
    events_before: int,
) -> SyntheticUnits:
    """Draw and write units `first` .. `first + n - 1`; return their truth."""
    keys = np.array([v.key for v in spec.variants])
    weights = np.array([v.weight for v in spec.variants], dtype=np.float64)
    weights = weights / weights.sum()
    lifts = np.array([v.click_lift for v in spec.variants], dtype=np.float64)
    units = np.array([unit_id(i) for i in range(first, first + n)], dtype=object)

    code = rng.choice(keys.size, size=n, p=weights)
    low, high = spec.exposures_per_unit
    owner = np.repeat(np.arange(n), rng.integers(low, high + 1, size=n))
    low, high = spec.slate_sizes
    slate = rng.integers(low, high + 1, size=owner.size)
    low, high = spec.exposure_seconds
    exposure_ts = T0 + rng.integers(low, high + 1, size=owner.size)
    first_ts = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_ts, owner, exposure_ts)
    impressions = np.bincount(owner, weights=slate, minlength=n)

    clicks = rng.poisson(spec.click_rate * impressions * lifts[code])
    purchases = rng.binomial(clicks, spec.purchase_rate)
    values = rng.lognormal(3.0, 1.0, size=int(purchases.sum())).round(2)
    valued = rng.random(values.size) < 1.0 - spec.valueless_share
    buyer = np.repeat(np.arange(n), purchases)
    revenue = np.bincount(buyer[valued], weights=values[valued], minlength=n)
    early = rng.random(n) < spec.early_share

    click_owner = np.repeat(np.arange(n), clicks)
    event_owner = np.concatenate([click_owner, buyer, np.flatnonzero(early)])
    n_early = int(early.sum())
    event_type = ["click"] * click_owner.size + ["purchase"] * buyer.size + ["click"] * n_early
    event_ts = np.concatenate(
        [
            first_ts[click_owner] + rng.integers(0, spec.event_seconds, size=click_owner.size),
            first_ts[buyer] + rng.integers(0, spec.event_seconds, size=buyer.size),
            first_ts[early] - rng.integers(1, spec.early_seconds, size=n_early),
        ]
    )
    event_value: list[float | None] = (
        [None] * click_owner.size
        + [v if ok else None for v, ok in zip(values.tolist(), valued.tolist(), strict=True)]
        + [None] * n_early
    )
    fixed_slate = spec.slate_sizes[0] == spec.slate_sizes[1]
    with engine.begin() as conn:
        insert_exposures(
            conn,
            reserve_exposure_ids(conn, owner.size),
            experiment_id,
            ExposureColumns(
                variant=keys[code[owner]].astype(object),
                unit_id=units[owner],
                seconds=exposure_ts,
                propensity=weights[code[owner]],
                slate_size=spec.slate_sizes[0] if fixed_slate else slate,
            ),
        )
        ids = range(events_before, events_before + event_owner.size)
        insert_events(
            conn,
            experiment_id,
            EventColumns(
                event_id=[f"synthetic-{experiment_id}-{i}" for i in ids],
                unit_id=units[event_owner],
                type=event_type,
                item_id=None,
                value=event_value,
                seconds=event_ts,
            ),
        )
    return SyntheticUnits(
        variant=keys[code],
        impressions=impressions.astype(np.float64),
        clicks=clicks.astype(np.float64),
        purchases=purchases.astype(np.float64),
        revenue=revenue.astype(np.float64),
        exposures=int(owner.size),
        events=int(event_owner.size),
    )
