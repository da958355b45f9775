"""Whole models end to end: passes of measuring sessions, each bounded by a budget when asked."""

from __future__ import annotations

from scripted_device import ScriptedRunner

from latbench.blocks.configs import AttnConfig, FFNConfig
from latbench.measuring.models import measure_models

ITEMS = [FFNConfig(224, 3, 96, 2), FFNConfig(224, 4, 176, 4), AttnConfig(224, 4, 176)]


def scripted() -> ScriptedRunner:
    runner = ScriptedRunner(lambda key: 0.3, clock_step_s=1.0)
    for item in ITEMS:  # rounds that never agree within 2 %: without a budget, up to the bound
        runner.slow(item.key, *[1.0 + 0.05 * (i % 7) for i in range(40)])
    return runner


def rounds_per_pass(timings) -> list[list[int]]:
    return [sorted(v.rounds for v in s.verdicts.values()) for s in timings.sessions]


def test_a_budget_per_pass_keeps_each_models_first_rounds_and_starts_no_more():
    bounded = measure_models(ITEMS, scripted(), rounds=3, passes=2, runs=5, budget_s=1.0)
    assert rounds_per_pass(bounded) == [[3, 3, 3], [3, 3, 3]]  # every model still has its rounds
    assert all(len(p) == len(ITEMS) for p in bounded.passes)
    free = measure_models(ITEMS, scripted(), rounds=3, passes=2, runs=5)
    assert max(max(r) for r in rounds_per_pass(free)) > 3  # the budget is what stopped them
