"""`check_table` on a scripted device: a check that sits in a slow spell is not a moved entry.

The device is a script (tests/fakes/scripted_device.py), so the slowdowns are exactly the ones
planted; the blocks, exports, journal, table and check session are the real ones.
"""

from __future__ import annotations

import pytest
from scripted_device import ScriptedRunner, latency_following_macs

from latbench.blocks.configs import FFNConfig
from latbench.core.errors import UsageError
from latbench.tables.build import BuildSettings, TableBuilder
from latbench.tables.check import CONFIRM_ROUNDS, check_table, moved_by

# Six FFN blocks of stage 3; ffn-r224-s3-c96-e4 (FFNS[1]) is also an anchor, so it is not planted.
FFNS = [FFNConfig(224, 3, w, e) for w in (96, 120, 144) for e in (2, 4)]


# A device whose FFN latency follows MACs exactly; empties and the rest cost little.
cost = latency_following_macs(FFNS)


@pytest.fixture
def table(tmp_path):
    settings = BuildSettings(min_separation_s=0.0, profile=False, calibration_models=0, jobs=1)
    return TableBuilder(ScriptedRunner(cost, clock_step_s=0.3), tmp_path / "t", settings).build(FFNS).table


def test_an_entry_read_slow_in_the_checks_first_rounds_is_confirmed_unmoved(table):
    runner = ScriptedRunner(cost, clock_step_s=0.3)  # its time, not the host's: no flake under load
    spell, moved, steady = FFNS[2].key, FFNS[3].key, FFNS[5].key
    runner.slow(spell, 1.25, 1.25, 1.25)  # all three first rounds agree, 25 % slow
    runner.slow(moved, *[0.8] * 20)  # the device really got faster for this entry
    res = check_table(table, runner, keys=[spell, moved, steady], rounds=3)
    by = {r["key"]: r for r in res.rows}
    assert res.moved == [moved]
    assert by[spell]["ratio"] == pytest.approx(1.0, rel=0.01) and not by[spell]["moved"]
    assert by[moved]["ratio"] == pytest.approx(0.8, rel=0.01)
    # Both suspects got the confirming rounds; the spell's later rounds agreed at the stored value.
    assert runner.measurements_of(moved) == 3 + CONFIRM_ROUNDS
    assert runner.measurements_of(spell) == 3 + CONFIRM_ROUNDS
    assert runner.measurements_of(steady) == 3


def test_fix_records_only_the_confirmed_move(table):
    runner = ScriptedRunner(cost)
    spell, moved = FFNS[0].key, FFNS[4].key
    runner.slow(spell, 1.3, 1.3, 1.3)
    runner.slow(moved, *[0.7] * 20)
    res = check_table(table, runner, keys=[spell, moved], rounds=3, fix=True)
    assert res.fixed == [moved]
    after = {r["key"]: r for r in res.rows}
    assert after[spell]["fixed_ms"] is None
    assert after[moved]["fixed_ms"] == pytest.approx(0.7 * cost(moved), rel=0.01)


class TwoThreadRunner(ScriptedRunner):
    def describe(self):
        return {**super().describe(), "threads": 2}


def test_fix_refuses_rounds_of_another_runtime_configuration(table):
    # The same device timed with two threads reads an entry moved; fixing would write its rounds
    # into a one-thread table. Checking (no fix) only warns.
    runner = TwoThreadRunner(lambda k: (0.6 if k == FFNS[0].key else 1.0) * cost(k))
    before = (table.path / "blocks.csv").read_bytes()
    with pytest.raises(UsageError, match=r"another device or runtime \(threads: 1 -> 2\).*without --fix"):
        check_table(table, runner, keys=[FFNS[0].key], rounds=3, fix=True)
    assert runner.calls == [] and (table.path / "blocks.csv").read_bytes() == before
    res = check_table(table, runner, keys=[FFNS[0].key], rounds=3)
    assert res.moved == [FFNS[0].key] and res.warnings[0] == "table provenance differs: threads: 1 -> 2"


def test_a_move_is_judged_as_a_factor_both_ways():
    # A stored value 2.5x too slow (now / stored = 0.4) moved as far as one 2.5x too fast: with
    # |ratio - 1| it would read 0.6, inside the noise a loaded host's check can report.
    assert moved_by(0.4) == pytest.approx(1.5) and moved_by(2.5) == pytest.approx(1.5)
    assert moved_by(1.0) == 0.0 and moved_by(0.0) == float("inf")
    assert moved_by(0.95) == pytest.approx(1 / 0.95 - 1)
