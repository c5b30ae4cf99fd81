"""The report's scorecard rows from a real analysis: one per comparison, bars, decisions."""

from __future__ import annotations

import dataclasses
import math

import pytest
from sqlalchemy import Engine

from reports.analysis import analyze
from reports.render import render_report
from reports.scorecard import build_scorecard, scorecard_decision
from tests.factories import seed_world


@pytest.mark.parametrize(
    ("verdict", "guardrail", "label", "tone"),
    [
        ("significant win", False, "ship", "up"),
        ("significant loss", False, "harm", "down"),
        ("inconclusive", False, "no difference", "neutral"),
        ("keep running", False, "keep running", "neutral"),
        ("significant loss", True, "guardrail breach", "down"),
        ("significant win", True, "guardrail improved", "up"),
        ("inconclusive", True, "guardrail OK", "neutral"),
    ],
)
def test_decision_words(verdict: str, guardrail: bool, label: str, tone: str) -> None:
    assert scorecard_decision(verdict, guardrail) == (label, tone)  # type: ignore[arg-type]


def test_unknown_decision_fails() -> None:
    with pytest.raises(ValueError, match=r"verdict: unknown decision \(got 'maybe'\)"):
        scorecard_decision("maybe", False)  # type: ignore[arg-type]


def test_rows_and_bars_of_a_real_analysis(engine: Engine) -> None:
    seed_world(engine, "page", "  guardrails: [ctr]")
    result = analyze(engine, "page")
    card = build_scorecard(result, "95%")
    comparisons = [(mr, cmp) for mr in result.metrics for cmp in mr.comparisons]
    assert len(card.rows) == len(comparisons) > 0
    # Primary metrics first, guardrails last, YAML order within each.
    expected = [m.metric for m in result.metrics if not m.guardrail]
    expected += [m.metric for m in result.metrics if m.guardrail]
    assert list(dict.fromkeys(row.metric for row in card.rows)) == expected
    # The common scale, worked out here from the comparisons: 0 and every finite bound.
    values = [0.0] + [
        v
        for _, cmp in comparisons
        for v in (cmp.rel_lift, *(cmp.rel_lift_ci or ()))
        if v is not None and math.isfinite(v)
    ]
    lo, hi = min(values), max(values)
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    by_key = {(mr.metric, cmp.variant): (mr, cmp) for mr, cmp in comparisons}
    for row in card.rows:
        mr, cmp = by_key[(row.metric, row.variant)]
        assert row.guardrail == mr.guardrail and row.verdict == cmp.decision
        assert (row.decision, row.tone) == scorecard_decision(cmp.decision, mr.guardrail)
        assert row.bar.zero == pytest.approx(100 * (0 - lo) / (hi - lo), abs=0.01)
        assert row.bar.point == pytest.approx(100 * (cmp.rel_lift - lo) / (hi - lo), abs=0.01)
        a, b = cmp.rel_lift_ci
        assert row.bar.left == pytest.approx(100 * (a - lo) / (hi - lo), abs=0.01)
        assert row.bar.width == pytest.approx(100 * (b - a) / (hi - lo), abs=0.02)
        assert 0 <= row.bar.left <= row.bar.point <= row.bar.left + row.bar.width <= 100
    assert card.zero == card.rows[0].bar.zero


def test_single_variant_metric_keeps_its_row(engine: Engine) -> None:
    seed_world(engine, "page", "  guardrails: [ctr]")
    result = analyze(engine, "page")
    alone = dataclasses.replace(result.metrics[0], comparisons=())
    card = build_scorecard(dataclasses.replace(result, metrics=(alone,)), "95%")
    (row,) = card.rows
    assert (row.metric, row.lift, row.decision) == (alone.metric, "—", "keep running")
    assert row.bar.left is None and row.bar.point is None and row.bar.zero == 50.0


def test_scorecard_opens_the_report_escaped(engine: Engine) -> None:
    seed_world(engine, "page", "  guardrails: [ctr]")
    evil = "<script>alert(1)</script>"
    result = analyze(engine, "page")
    names = [mr.metric for mr in result.metrics]
    descriptions = {f"metric:{name}": f"{name} {evil}" for name in names}
    page = render_report(dataclasses.replace(result, descriptions=descriptions))
    assert page.index('<section class="scorecard" id="scorecard">') == page.index("<section")
    assert "<script" not in page
    # Each description twice: its scorecard rows' metric cell... and the metric's section.
    rows = sum(max(len(mr.comparisons), 1) for mr in result.metrics)
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == rows + len(names)
