"""The time base: anchors say how fast the device was in each session."""

import pytest

from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.journal import Journal
from latbench.measuring.measurement import Measurement
from latbench.measuring.timebase import (
    anchor_levels,
    base_levels,
    session_factor,
    session_factors,
    timebase_key,
)


def reading(ms):
    return Measurement("a", [ms] * 20)


def test_anchor_levels_take_the_consensus_of_readings():
    with Journal(":memory:") as j:
        s = j.start_session("build", "cpu")
        for i, v in enumerate([1.0, 1.3, 1.01, 1.5]):
            j.record_anchor(s, "cpu", i, "ffn", reading(v))
        j.record_anchor(s, "cpu", 9, "mhsa", reading(2.0))
        levels = anchor_levels(j.anchors(s), ConsensusRule())
    assert levels["ffn"] == pytest.approx(1.005)  # the burst readings (1.3, 1.5) do not count
    assert levels["mhsa"] == 2.0  # a single reading: taken as it is


def test_sessions_are_put_on_the_base_sessions_time_base():
    rule = ConsensusRule()
    with Journal(":memory:") as j:
        base = j.start_session("build", "cpu")
        for i in range(3):
            j.record_anchor(base, "cpu", i, "ffn", reading(1.0))
            j.record_anchor(base, "cpu", 10 + i, "mhsa", reading(2.0))
        later = j.start_session("check", "cpu")  # the host is 10 % slower now
        for i in range(3):
            j.record_anchor(later, "cpu", i, "ffn", reading(1.1))
            j.record_anchor(later, "cpu", 10 + i, "mhsa", reading(2.2))
        b, lt = timebase_key(base, "cpu"), timebase_key(later, "cpu")
        # A session still running never becomes the base: here the later one does.
        assert session_factors(j, rule, current=base) == {lt: 1.0, b: pytest.approx(1.1)}
        j.set_meta("time_base", None)
        factors = session_factors(j, rule)
        assert factors[b] == 1.0 and factors[lt] == pytest.approx(1 / 1.1)
        fixed = base_levels(j, rule)
        assert fixed["session"] == b and fixed["levels"] == {"ffn": 1.0, "mhsa": 2.0}
        # Fixed once: a faster session later does not move the base.
        fast = j.start_session("check", "cpu")
        for i in range(3):
            j.record_anchor(fast, "cpu", i, "ffn", reading(0.5))
        assert base_levels(j, rule)["session"] == b
        assert session_factors(j, rule)[timebase_key(fast, "cpu")] == pytest.approx(2.0)


def test_two_devices_in_one_session_get_their_own_factors():
    rule = ConsensusRule()
    with Journal(":memory:") as j:
        s = j.start_session("build", "farm")
        for i in range(3):
            j.record_anchor(s, "android:A", i, "ffn", reading(1.0))
            j.record_anchor(s, "android:B", i, "ffn", reading(1.2))  # a slower unit of the same model
        factors = session_factors(j, rule)
    assert factors[timebase_key(s, "android:A")] == 1.0
    assert factors[timebase_key(s, "android:B")] == pytest.approx(1 / 1.2)


def test_session_factor_is_the_median_over_anchors():
    assert session_factor({"a": 1.1, "b": 2.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 1.0}) == pytest.approx(1.0)
    assert session_factor({"x": 1.0}, {"a": 1.0}) is None


def test_a_short_sessions_burst_reading_does_not_move_its_rounds():
    """A build killed a few measurements in leaves a session with single anchor readings; one taken
    in a burst must not put the session's rounds 23 % fast (median of ratios: 11.5 %)."""
    rule = ConsensusRule()
    with Journal(":memory:") as j:
        base = j.start_session("build", "cpu")
        for i in range(3):
            j.record_anchor(base, "cpu", i, "ffn", reading(1.0))
            j.record_anchor(base, "cpu", 10 + i, "mhsa", reading(2.0))
        one = j.start_session("build", "cpu")  # killed after one anchor reading, in a burst
        j.record_anchor(one, "cpu", 0, "ffn", reading(1.3))
        two = j.start_session("build", "cpu")  # two single readings, one in a burst: the faster says
        j.record_anchor(two, "cpu", 0, "ffn", reading(1.3))
        j.record_anchor(two, "cpu", 1, "mhsa", reading(2.0))
        slower = j.start_session("build", "cpu")  # two single readings that agree: a slower session
        j.record_anchor(slower, "cpu", 0, "ffn", reading(1.2))
        j.record_anchor(slower, "cpu", 1, "mhsa", reading(2.4))
        factors = session_factors(j, rule)
    assert timebase_key(one, "cpu") not in factors
    assert factors[timebase_key(two, "cpu")] == pytest.approx(1.0)
    assert factors[timebase_key(slower, "cpu")] == pytest.approx(1 / 1.2)
