"""Commands about the statistics themselves: power, selfcheck."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    pass

from abplatform.cli.base import app, fail


@app.command()
def power(
    baseline: Annotated[float, typer.Option(help="Control's proportion or mean.")],
    mde: Annotated[float, typer.Option(help="Minimum detectable effect (relative by default).")],
    alpha: Annotated[float, typer.Option(help="Two-sided significance level.")] = 0.05,
    power: Annotated[float, typer.Option("--power", help="Chance to detect the effect.")] = 0.8,
    metric_type: Annotated[
        str, typer.Option("--metric-type", help="proportion or mean.")
    ] = "proportion",
    sd: Annotated[
        float | None, typer.Option(help="Per-unit standard deviation (mean metrics).")
    ] = None,
    absolute: Annotated[
        bool, typer.Option("--absolute", help="--mde is an absolute difference.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Units needed per variant to detect an effect (two-sided test, two equal variants)."""
    from reports.power import units_per_variant

    if metric_type not in ("proportion", "mean"):
        fail(f"unknown --metric-type {metric_type!r}", hint="use proportion or mean")
    try:
        result = units_per_variant(
            baseline,
            mde,
            alpha=alpha,
            power=power,
            metric_type="mean" if metric_type == "mean" else "proportion",
            sd=sd,
            absolute=absolute,
        )
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return
    kind = "absolute" if absolute else "relative"
    print(
        f"{result.units_per_variant:,} units per variant ({2 * result.units_per_variant:,} "
        f"in total) to detect {result.baseline:g} -> {result.target:.6g} ({kind} mde {mde:g}) "
        f"with power {power:g} at two-sided alpha {alpha:g}"
    )


@app.command()
def selfcheck(
    replications: Annotated[
        int, typer.Option(min=10, help="Monte Carlo replications per scenario.")
    ] = 10_000,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 2026,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure false-positive rates, coverage, peeking, CUPED and FWER by Monte Carlo."""
    from reports.selfcheck import format_table, run_selfcheck

    result = run_selfcheck(replications=replications, seed=seed)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        print(format_table(result))
    if not result.passed:
        raise typer.Exit(1)
