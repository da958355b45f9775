"""Whole models end to end: passes of measuring sessions, each bounded by a budget when asked, and
more passes for the models whose passes do not agree."""

from __future__ import annotations

import statistics

import pytest
from scripted_device import ScriptedRunner

from latbench.blocks.configs import AttnConfig, FFNConfig
from latbench.measuring.models import EXTRA_PASSES, measure_models

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
    # every model still has its rounds, in the passes asked for and in the extra ones (bounded alike)
    assert rounds_per_pass(bounded) == [[3] * len(p) for p in bounded.passes]
    assert all(len(p) == len(ITEMS) for p in bounded.passes[:2])
    free = measure_models(ITEMS, scripted(), rounds=3, passes=2, runs=5)
    assert max(max(r) for r in rounds_per_pass(free)) > 3  # the budget is what stopped them


def per_model(timings, item) -> list[float | None]:
    """One model's value in each pass, None where a pass did not measure it (relative to its base)."""
    return [None if item.key not in p else round(p[item.key] / 0.3, 3) for p in timings.passes]


def test_a_model_read_slow_in_a_whole_pass_is_measured_again_and_its_slow_pass_left_out():
    runner = ScriptedRunner(lambda key: 0.3, clock_step_s=1.0)
    slow, steady = ITEMS[0], ITEMS[1]
    runner.slow(slow.key, 1.4, 1.4, 1.4)  # every round of its first pass, in agreement
    timings = measure_models(ITEMS, runner, rounds=3, passes=2, runs=5)
    assert per_model(timings, slow) == [1.4, 1.0, 1.0]
    assert per_model(timings, steady) == [1.0, 1.0, None]  # the extra pass measured only what disagreed
    assert timings.mean(slow.key) == pytest.approx(0.3, rel=0.01)  # not the 0.36 of the two passes' mean
    assert timings.agrees(slow.key) and timings.slow_passes(slow.key) == [pytest.approx(0.42, rel=0.01)]
    assert timings.noise(slow.key) == pytest.approx(0.0, abs=0.01)
    assert timings.asked_passes == 2 and len(timings.passes) == 3


def test_two_slow_passes_that_agree_do_not_outvote_a_faster_one():
    runner = ScriptedRunner(lambda key: 0.3, clock_step_s=1.0)
    item = ITEMS[1]
    runner.slow(item.key, *[1.0] * 3, *[1.3] * 6)  # fast, slow, slow (the first extra pass), fast
    timings = measure_models(ITEMS, runner, rounds=3, passes=2, runs=5)
    assert per_model(timings, item) == [1.0, 1.3, 1.3, 1.0]
    assert timings.mean(item.key) == pytest.approx(0.3, rel=0.01) and timings.agrees(item.key)


def test_a_model_whose_passes_never_agree_keeps_its_fastest_and_says_so():
    runner = ScriptedRunner(lambda key: 0.3, clock_step_s=1.0)
    item = ITEMS[2]
    runner.slow(item.key, *[1.0] * 3, *[1.3] * 3, *[1.5] * 3 * EXTRA_PASSES)
    timings = measure_models(ITEMS, runner, rounds=3, passes=2, runs=5)
    assert len(timings.passes) == 2 + EXTRA_PASSES  # measured again, but no more than that
    assert not timings.agrees(item.key)
    assert timings.mean(item.key) == pytest.approx(0.3, rel=0.01)  # noise only slows: the fastest
    spread = 0.5 / statistics.fmean([1.0, 1.3, *[1.5] * EXTRA_PASSES])
    assert timings.noise(item.key) == pytest.approx(spread, rel=0.01)  # the spread of all its passes


def test_an_extra_pass_measures_the_reference_models_too_and_is_put_on_the_time_base_by_them():
    references = [FFNConfig(224, 3, 96, 4), FFNConfig(224, 4, 176, 2), AttnConfig(224, 3, 96)]
    slow = ITEMS[0]
    runner = ScriptedRunner(lambda key: 0.3, clock_step_s=1.0)
    runner.slow(slow.key, *[1.4] * 3, *[1.0] * 3, *[1.2] * 3)
    for ref in references:  # the device is 1.2x slower in the extra pass: the references show it
        runner.slow(ref.key, *[1.0] * 6, *[1.2] * 3)
    timings = measure_models([*ITEMS, *references], runner, rounds=3, passes=2, runs=5,
                             reference_ms={r.key: 0.3 for r in references})
    assert len(timings.passes) == 3 and set(timings.passes[2]) == {slow.key, *(r.key for r in references)}
    assert timings.factors[2] == pytest.approx(1 / 1.2, rel=0.01)
    assert per_model(timings, slow) == [1.4, 1.0, 1.0] and timings.agrees(slow.key)


def test_a_single_pass_is_never_measured_again():
    runner = ScriptedRunner(lambda key: 0.3, clock_step_s=1.0)
    runner.slow(ITEMS[0].key, 1.4, 1.4, 1.4)
    timings = measure_models(ITEMS, runner, rounds=3, passes=1, runs=5)
    assert len(timings.passes) == 1 and timings.agrees(ITEMS[0].key)
    assert timings.mean(ITEMS[0].key) == pytest.approx(0.42, rel=0.01)
