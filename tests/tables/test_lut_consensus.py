"""Table builds on a scripted device: consensus re-measurement and plausibility across entries.

The device is a script (tests/fakes/scripted_device.py), so the disturbances are exactly the ones
planted; the blocks, exports, journal and derived table are the real ones.
"""

from __future__ import annotations

import pandas as pd
import pytest
from scripted_device import ScriptedRunner

from latbench.blocks.configs import FFNConfig
from latbench.tables.build import BuildSettings, TableBuilder

# Twelve FFN blocks of stage 3: enough neighbours for a trend.
FFNS = [FFNConfig(224, 3, w, e) for w in (96, 120, 144, 192) for e in (2, 3, 4)]


def cost(key: str) -> float:
    """A device whose FFN latency follows MACs exactly; empties and the rest cost little."""
    for c in FFNS:
        if c.key == key:
            return 0.02 + 1.5e-9 * c.macs()
    return 0.03


def build(runner, tmp_path, **kw):
    settings = BuildSettings(min_separation_s=0.0, profile=False, calibration_models=0, jobs=1, **kw)
    return TableBuilder(runner, tmp_path / "t", settings).build(FFNS)


def test_two_disturbed_rounds_are_re_measured_to_the_undisturbed_value(tmp_path):
    runner = ScriptedRunner(cost)
    key = FFNS[4].key
    runner.slow(key, 1.842 / 1.49, 1.0, 2.015 / 1.49)  # the journal: 1.842 / 1.49 / 2.015 ms
    res = build(runner, tmp_path)
    row = pd.read_csv(tmp_path / "t" / "blocks.csv").set_index("key").loc[key]
    assert row["latency_ms"] == pytest.approx(cost(key), rel=0.01)
    assert bool(row["consensus"]) and row["rounds"] == 4 and row["agreement"] == "2/4"
    assert pd.isna(row["flags"])
    assert f"{key}#3" in res.measured


def test_a_planted_outlier_is_re_measured_and_flagged_when_it_stays(tmp_path):
    runner = ScriptedRunner(cost)
    stuck = FFNS[7].key
    runner.slow(stuck, *[1.6] * 20)  # every round 60 % slow: the rounds agree, the neighbours do not
    build(runner, tmp_path)
    blocks = pd.read_csv(tmp_path / "t" / "blocks.csv").set_index("key")
    row = blocks.loc[stuck]
    assert bool(row["consensus"]) and row["flags"] == "implausible"
    assert row["trend_ratio"] > 1.4
    assert row["rounds"] == 5 and runner.measurements_of(stuck) == 5  # re-measured twice before flagging
    assert blocks.drop(index=stuck)["flags"].isna().all()


def test_a_transient_outlier_that_fooled_the_consensus_is_caught_by_its_neighbours(tmp_path):
    runner = ScriptedRunner(cost)
    key = FFNS[10].key
    runner.slow(key, 1.5, 1.5, 1.5)  # one long burst over all three rounds: they agree on a wrong value
    build(runner, tmp_path)
    row = pd.read_csv(tmp_path / "t" / "blocks.csv").set_index("key").loc[key]
    assert row["latency_ms"] == pytest.approx(cost(key), rel=0.01)  # later rounds agree on the true value
    assert pd.isna(row["flags"]) and row["rounds"] == 5


def test_entries_that_never_agree_are_flagged_and_shown(tmp_path, run_cli_json):
    runner = ScriptedRunner(cost)
    key = FFNS[1].key
    runner.slow(key, 1.0, *[1.1 + 0.07 * i for i in range(10)])  # one good round, then ever slower
    build(runner, tmp_path)
    row = pd.read_csv(tmp_path / "t" / "blocks.csv").set_index("key").loc[key]
    assert row["flags"] == "no-consensus" and row["rounds"] == 8 and not bool(row["consensus"])
    shown = run_cli_json("lut", "show", str(tmp_path / "t"))
    assert shown["flagged"] == {key: "no-consensus"}


def test_an_entry_measured_only_in_a_slow_period_is_flagged_in_the_table(tmp_path):
    from latbench.measuring.consensus import ConsensusRule

    key = FFNS[5].key
    recorder = ScriptedRunner(cost)
    build(recorder, tmp_path / "order", consensus=ConsensusRule(max_rounds=3))
    first_wave = [c[0] for c in recorder.calls]
    positions = [i for i, label in enumerate(first_wave) if label == key][:3]
    runner = ScriptedRunner(cost)  # the same order (same seed); the device slow around each round of `key`
    runner.period_calls = {i for p in positions for i in range(p - 2, p + 3)}
    build(runner, tmp_path, consensus=ConsensusRule(max_rounds=3))  # no round to spare
    blocks = pd.read_csv(tmp_path / "t" / "blocks.csv").set_index("key")
    assert "slow-period" in blocks.loc[key, "flags"] and blocks.loc[key, "latency_ms"] > 1.25 * cost(key)
    meta = pd.read_json(tmp_path / "t" / "meta.json", typ="series")
    assert meta["periods"]["threshold"] == 0.1 and key in meta["flagged"]
