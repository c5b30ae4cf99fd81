"""The analysis of a simulated run agrees with the simulator's ground truth.

For each metric and variant, the estimate must lie within 4 standard errors of the
population truth, and so must each difference between variants. With 3 metrics x (2
estimates + 1 difference) = 9 checks at 4 SE, a correct pipeline fails by chance with
probability below 9 * 6.3e-5 = 6e-4.
"""

from __future__ import annotations

import pytest

from abplatform.config import load_experiment_text
from abplatform.storage.db import open_database
from reports.analysis import analyze
from simulator.runner import simulate

Z95 = 1.959963984540054
EXPERIMENT = """
key: truth_check
variants:
  - {key: control, weight: 0.5, strategy: {kind: random}}
  - {key: treatment, weight: 0.5, strategy: {kind: popularity, params: {per_category: true}}}
metrics:
  - {name: purchase_rate, type: proportion, event: purchase}
  - {name: clicks_per_user, type: mean, event: click}
  - {name: revenue_per_user, type: mean, event: purchase, value: sum}
  - {name: ctr, type: ratio, numerator: {event: click}, denominator: {event: impression}}
simulation: {users: 6000, days: 3, items: 400, slate_size: 8, seed: 11}
"""


def se_from_ci(ci: list[float]) -> float:
    return (ci[1] - ci[0]) / (2 * Z95)


@pytest.mark.parametrize("seed", [11, 12])
def test_estimates_cover_ground_truth(sqlite_url: str, seed: int) -> None:
    engine = open_database(sqlite_url)
    simulate(engine, load_experiment_text(EXPERIMENT), seed=seed)
    result = analyze(engine, "truth_check").to_dict()
    for metric in result["metrics"]:
        truth = metric["ground_truth"]
        estimates = {v["variant"]: v for v in metric["variants"]}
        for variant, value in truth.items():
            estimate = estimates[variant]
            se = se_from_ci(estimate["ci"])
            assert abs(estimate["mean"] - value) < 4 * se, (metric["metric"], variant)
        (comparison,) = metric["comparisons"]
        true_diff = truth["treatment"] - truth["control"]
        se = se_from_ci(comparison["diff_ci"])
        assert abs(comparison["diff"] - true_diff) < 4 * se, metric["metric"]
    engine.dispose()


def test_the_better_strategy_wins_in_truth_and_estimate(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    simulate(engine, load_experiment_text(EXPERIMENT))
    result = analyze(engine, "truth_check").to_dict()
    ctr = next(m for m in result["metrics"] if m["metric"] == "ctr")
    # Personalised popularity beats random slates by a wide margin in this world.
    assert ctr["ground_truth"]["treatment"] > 1.5 * ctr["ground_truth"]["control"]
    (comparison,) = ctr["comparisons"]
    assert comparison["p_value"] < 1e-6 and comparison["diff"] > 0
    engine.dispose()


SCENES_EXPERIMENT = """
key: truth_scenes
variants:
  - {key: control, weight: 0.5, strategy: {kind: popularity}}
  - key: treatment
    weight: 0.5
    strategy:
      kind: scene_router
      params:
        strategies:
          pop: {kind: popularity, params: {per_category: true}}
          similar: {kind: similar_items}
          complements: {kind: complementary, params: {events: [click, purchase]}}
        routes: {home_page: pop, product_detail: similar, cart_page: complements}
metrics:
  - {name: purchase_rate, type: proportion, event: purchase}
  - {name: clicks_per_user, type: mean, event: click}
  - {name: ctr, type: ratio, numerator: {event: click}, denominator: {event: impression}}
simulation:
  users: 5000
  days: 3
  items: 400
  slate_size: 6
  seed: 5
  truth_draws: 8
  scenes: {home_page: 0.5, product_detail: 0.3, cart_page: 0.2}
  world: {satiation: 1.0}
"""


def test_scenes_and_satiation_keep_truth_and_estimates_in_agreement(sqlite_url: str) -> None:
    # Context draws make the truth a Monte Carlo average too (8 draws per user and scene,
    # the same draws for both variants); its noise is well below the estimates' SE.
    engine = open_database(sqlite_url)
    simulate(engine, load_experiment_text(SCENES_EXPERIMENT))
    result = analyze(engine, "truth_scenes").to_dict()
    for metric in result["metrics"]:
        truth = metric["ground_truth"]
        (comparison,) = metric["comparisons"]
        se = se_from_ci(comparison["diff_ci"])
        assert abs(comparison["diff"] - (truth["treatment"] - truth["control"])) < 4 * se
        for estimate in metric["variants"]:
            se = se_from_ci(estimate["ci"])
            assert abs(estimate["mean"] - truth[estimate["variant"]]) < 4 * se
    with engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT scene, COUNT(*) FROM exposures GROUP BY scene")).all()
        scenes = {scene: count for scene, count in rows}
        contexts = conn.execute(
            text("SELECT context FROM exposures WHERE scene = 'cart_page' LIMIT 1")
        ).scalar_one()
    assert set(scenes) == {"home_page", "product_detail", "cart_page"}
    assert "cart_items" in contexts
    engine.dispose()
