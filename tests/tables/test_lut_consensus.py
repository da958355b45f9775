"""Table builds on a scripted device: consensus re-measurement and plausibility across entries.

The device is a script (tests/fakes/scripted_device.py), so the disturbances are exactly the ones
planted; the blocks, exports, journal and derived table are the real ones.
"""

from __future__ import annotations

import pandas as pd
import pytest
from scripted_device import ScriptedRunner, latency_following_macs

from latbench.blocks.configs import FFNConfig
from latbench.tables.build import BuildSettings, TableBuilder

# Twelve FFN blocks of stage 3: enough neighbours for a trend.
FFNS = [FFNConfig(224, 3, w, e) for w in (96, 120, 144, 192) for e in (2, 3, 4)]


# A device whose FFN latency follows MACs exactly; empties and the rest cost little.
cost = latency_following_macs(FFNS)


def build(runner, tmp_path, **kw):
    # These tests pin the consensus mechanics under a given rule: no rules derived from the device's
    # noise (tests/measuring/test_noise.py covers those), unless a test asks for them.
    kw.setdefault("target_precision", None)
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


def test_a_calibration_model_measured_only_in_a_slow_period_leaves_the_fit(tmp_path):
    """A journal written directly (no device): six calibration models that run exactly 1.1x their
    blocks' overhead sum, one of them measured only while the device read 30 % slow."""
    from latbench.blocks.candidates import sample_candidates
    from latbench.blocks.configs import EmptyConfig, overhead_blocks
    from latbench.measuring.journal import Journal
    from latbench.measuring.measurement import Measurement
    from latbench.space import SearchSpace
    from latbench.tables.build import derive_table
    from latbench.tables.overhead import OverheadModel

    models = sample_candidates(SearchSpace.default(), 224, 6, seed=1, purpose="calibration")
    blocks = {b.key: b for m in models for b in m.blocks()}
    blocks |= {e.key: e for e in overhead_blocks(list(blocks.values())) + [EmptyConfig.for_shape(224, (1, 3, 224, 224))]}
    ms = {k: (0.01 if b.kind == "empty" else 0.05 + 2e-9 * b.macs()) for k, b in blocks.items()}
    truth = {m.key: 1.1 * OverheadModel(ms).estimate(m.blocks()) for m in models}
    slow = models[2]
    rows: list[tuple[float, str, int, str, dict, float]] = []  # (at, key, round, role, fields, value)
    t = 1000.0
    for key, b in blocks.items():
        for r in range(3):
            rows.append((t + 100 * r + len(rows) * 0.01, key, r, "block", b.fields(), ms[key]))
    for i, m in enumerate(models):
        for r in range(3):
            at = 2000.0 + 1000 * r + 30 * i  # models far apart: each its own period
            rows.append((at, m.key, r, "model", m.fields(), truth[m.key] * (1.3 if m is slow else 1.0)))
            if m is slow:  # the device was slow around each of its rounds: four other entries say so
                for j, key in enumerate(list(blocks)[:4]):
                    rows.append((at + (j - 1.5), key, 3 + r, "block", blocks[key].fields(), 1.3 * ms[key]))
    with Journal(tmp_path / "journal.sqlite") as journal:
        journal.set_meta("resolution", 224)
        for at, key, r, role, fields, value in rows:
            journal.record(key, r, role, fields, Measurement(key, [value] * 20), None)
            journal.db.execute("UPDATE measurements SET measured_at = ? WHERE key = ? AND round = ?", (at, key, r))
        journal.db.commit()
        table = derive_table(journal, tmp_path / "t")
    flags = table.models.set_index("name")["flags"]
    assert flags[slow.name] == "slow-period" and flags.drop(index=slow.name).isna().all()
    ov = table.overhead
    assert ov["left_out"] == [slow.name] and slow.name not in ov["calibrated_on"] and len(ov["calibrated_on"]) == 5
    assert all(abs(e) < 0.01 for e in ov["fit_errors_pct"]) and ov["scale"] == pytest.approx(1.1, rel=1e-4)
    assert not table.flagged().get(list(blocks)[0])  # the blocks' own fast rounds still agree
