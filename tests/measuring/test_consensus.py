"""The consensus rule: when do an entry's rounds agree, and what is accepted when they do not."""

import math

import pytest

from latbench.core.errors import UsageError
from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.measurement import Measurement


def test_fastest_rounds_agreeing_are_accepted():
    v = ConsensusRule().decide([1.50, 1.49, 1.80])
    assert v.agreed and not v.needs_more
    assert v.value == pytest.approx(1.495) and v.members == (0, 1)
    assert v.agreement == "2/3" and v.spread == pytest.approx(1.50 / 1.49 - 1)


def test_two_disturbed_rounds_of_three_ask_for_more():
    # The journal of mhsa-r224-s3-c144 on the host: the median of three kept 1.842.
    v = ConsensusRule().decide([1.842, 1.49, 2.015])
    assert not v.agreed and v.needs_more and v.agreement == "0/3"
    # Disturbed rounds that agree with each other, above a faster one, are no consensus either.
    v = ConsensusRule().decide([1.85, 1.49, 1.86])
    assert not v.agreed and v.needs_more
    # A later, undisturbed round settles it on the fast value.
    v = ConsensusRule().decide([1.85, 1.49, 1.86, 1.50])
    assert v.agreed and v.value == pytest.approx(1.495)


def test_never_agreeing_is_flagged_and_takes_the_least_disturbed_round():
    rule = ConsensusRule(max_rounds=5)
    # A head block of the disturbed benchmark build: one clean round, slower ones that agree among
    # themselves. With slowdown-only noise the clean round is the truth.
    v = rule.decide([0.0519, 0.0331, 0.0520, 0.0478, 0.0497])
    assert not v.agreed and not v.needs_more
    assert v.value == 0.0331 and v.members == (1,)
    v = rule.decide([1.0, 1.2, 1.4, 1.6, 1.8])
    assert not v.agreed and v.value == 1.0


def test_too_few_rounds_and_bad_values():
    rule = ConsensusRule()
    v = rule.decide([1.0, 1.0])  # below min_rounds: not yet
    assert not v.agreed and v.needs_more
    v = rule.decide([])
    assert math.isnan(v.value) and v.needs_more
    v = rule.decide([math.nan, 1.0, 1.01, 1.02])
    assert v.agreed and v.value == pytest.approx(1.01)


def test_round_statistic_is_a_low_percentile_of_the_samples():
    m = Measurement("x", [1.0 + i / 100 for i in range(101)])
    assert ConsensusRule(statistic="p5").round_value(m) == pytest.approx(1.05)
    assert ConsensusRule(statistic="median").round_value(m) == pytest.approx(1.5)
    assert ConsensusRule(statistic="min").round_value(m) == pytest.approx(1.0)
    assert math.isnan(ConsensusRule().round_value(Measurement("x", [])))


def test_rule_validation_and_round_trip():
    for bad in ({"statistic": "mean"}, {"tolerance": 0}, {"quorum": 4, "max_rounds": 3}, {"min_rounds": 0}):
        with pytest.raises(UsageError):
            ConsensusRule(**bad)
    rule = ConsensusRule(statistic="p10", tolerance=0.04, quorum=3, max_rounds=9)
    d = rule.to_dict()
    assert "per-round p10" in d["rule"] and ConsensusRule.from_dict(d) == rule
