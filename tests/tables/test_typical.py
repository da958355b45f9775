"""Two latencies per entry: the fast state and the typical one (what benchmark tools print)."""

from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest
from scripted_device import ScriptedRunner

import latbench
from latbench.measuring.journal import Journal
from latbench.measuring.measurement import Measurement
from latbench.measuring.noise import within_ratio
from latbench.tables.build import BuildSettings, TableBuilder, plan_tables


class TwoStateRunner(ScriptedRunner):
    """Samples alternate between the fast state and one 30 % slower in runs of 5 (a third of the
    runs slow), and every fourth measurement falls in a whole-device slow period (x1.2)."""

    def measure(self, prepared, policy=None, *, profile=False):
        if len(self.calls) % 4 == 3:
            self.period_calls.add(len(self.calls))
        self.period_factor = 1.2
        m = super().measure(prepared, policy, profile=profile)
        samples = [x * (1.3 if (i // 5) % 3 == 2 else 1.0) for i, x in enumerate(m.samples_ms)]
        return Measurement(m.label, samples, provenance=m.provenance)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    [plan] = plan_tables(models=["efficientformerv2_s0"], resolutions=[224],
                         out=tmp_path_factory.mktemp("t") / "t", device_id="scripted")
    def cost(key: str) -> float:  # blocks of 50-100 us over an empty model's 10 us; S0 whole ~1.5 ms
        if key.startswith("empty-"):
            return 0.01
        return 1.5 if "efficientformerv2" in key else 0.05 + 0.001 * (sum(map(ord, key)) % 50)

    runner = TwoStateRunner(cost)
    settings = BuildSettings(min_separation_s=0.0, profile=False, jobs=1, runs=60)
    return TableBuilder(runner, plan.out, settings).build(plan.configs, resolution=224,
                                                          calibration=plan.calibration).table


def test_every_entry_keeps_its_fast_state_and_its_typical_latency(built):
    blocks = pd.read_csv(built.path / "blocks.csv").set_index("key")
    meta = json.loads((built.path / "meta.json").read_text())
    noise = meta["noise_profile"]
    period = noise["typical_factor"] / noise["within_ratio"]
    assert period > 1.01  # rounds in the device's slow periods raise the typical state
    with Journal(built.path / "journal.sqlite") as journal:
        rows = journal.rows("block")
    own = {key: within_ratio([r.measurement for r in rows[key]]) for key in blocks.index}
    assert all(w > 1.0 for w in own.values())  # a third of the runs 30 % slow moves the median off the fast state
    for _key, row in blocks.iterrows():
        # The within-round ratio of the entry's kind (the median over its entries), not its own.
        kind = statistics.median(own[k] for k in blocks.index[blocks["kind"] == row["kind"]])
        assert row["typical_ms"] == pytest.approx(row["latency_ms"] * kind * period, rel=1e-4)  # meta.json rounds the profile
    assert "typical_ms" in meta["latencies"] and "fast state" in meta["latencies"]["latency_ms"]


def test_the_calibration_fits_both_and_estimates_give_both(built, run_cli_json):
    overhead = built.meta["overhead"]
    assert overhead["calibrated"] and set(overhead["typical_scales"]) == {"attention", "rest"}
    measured = built.models.set_index("name").loc["efficientformerv2_s0"]
    assert measured["typical_ms"] > measured["latency_ms"]
    e = latbench.estimate(built, "efficientformerv2_s0")
    # Calibrated on that very model: each estimate is its own measurement.
    assert e.latency_ms == pytest.approx(measured["latency_ms"], rel=1e-6)
    assert e.typical_ms == pytest.approx(measured["typical_ms"], rel=1e-5)  # a least-squares fit of one model
    [js] = run_cli_json("lut", "estimate", str(built.path), "efficientformerv2_s0")
    assert js["typical_ms"] == pytest.approx(e.typical_ms) and js["latency_ms"] == pytest.approx(e.latency_ms)
    frame = latbench.estimate_many(built, ["efficientformerv2_s0"])
    assert frame["typical_ms"].iloc[0] == pytest.approx(e.typical_ms)


def test_estimates_carry_the_typical_latency_s_uncertainty_and_warn_when_it_is_wide(built, tmp_path):
    from latbench.tables.table import LatencyTable

    # The build's own figure comes from its readings' batches over wall-clock time: 0 ("cannot
    # say") when a loaded host bunches them into fewer than three batches, so both ways are checked.
    stated = float(built.meta["noise_profile"].get("typical_uncertainty") or 0.0)
    e = latbench.estimate(built, "efficientformerv2_s0")
    assert e.typical_uncertainty_pct == (pytest.approx(100 * stated) if stated > 0 else None)
    assert e.to_dict()["typical_uncertainty_pct"] == e.typical_uncertainty_pct
    for value, shown, warned in ((0.0, None, False), (0.02, 2.0, False), (0.09, 9.0, True)):
        meta = dict(built.meta) | {"noise_profile": dict(built.meta["noise_profile"], typical_uncertainty=value)}
        table = LatencyTable(built.blocks, built.ops, built.models, meta, tmp_path)
        e = latbench.estimate(table, "efficientformerv2_s0")
        assert e.typical_uncertainty_pct == (None if shown is None else pytest.approx(shown))
        assert e.to_dict()["typical_uncertainty_pct"] == e.typical_uncertainty_pct
        assert any("typical latency +-9.0 %" in w for w in e.warnings) is warned


def test_a_table_without_typical_latencies_still_estimates(built, tmp_path):
    old = built.blocks.drop(columns=["typical_ms"])
    from latbench.tables.table import LatencyTable

    table = LatencyTable(old, built.ops, built.models, dict(built.meta), tmp_path)
    e = latbench.estimate(table, "efficientformerv2_s0")
    assert e.typical_ms is None and e.latency_ms == pytest.approx(latbench.estimate(built, "efficientformerv2_s0").latency_ms)
    assert e.typical_uncertainty_pct is None


class NoisyBlocksRunner(ScriptedRunner):
    """Blocks run 30 % slow in two of every three stretches of 5 runs (their rounds' medians sit in
    the slow state); whole models' runs (tens of milliseconds on a real host) average that noise
    away: their rounds are flat."""

    def measure(self, prepared, policy=None, *, profile=False):
        m = super().measure(prepared, policy, profile=profile)
        if m.label.startswith("arch-"):  # a whole model
            return m
        samples = [x * (1.3 if (i // 5) % 3 else 1.0) for i, x in enumerate(m.samples_ms)]
        return Measurement(m.label, samples, provenance=m.provenance)


def test_whole_models_typical_latency_follows_their_own_rounds(tmp_path):
    """Measured on this VM: blocks' rounds read median/p2 1.12, whole models' 1.05; given the
    blocks' within-round ratio the typical estimate of whole models read 8.7 % high."""
    from latbench.measuring.noise import journal_profile

    [plan] = plan_tables(models=["efficientformerv2_s0"], resolutions=[224], out=tmp_path / "t", device_id="scripted")
    runner = NoisyBlocksRunner(lambda key: 1.5 if key.startswith("arch-") else 0.05)
    settings = BuildSettings(min_separation_s=0.0, profile=False, jobs=1, runs=60)
    table = TableBuilder(runner, plan.out, settings).build(plan.configs, resolution=224,
                                                           calibration=plan.calibration).table
    with Journal(table.path / "journal.sqlite") as journal:
        models = journal_profile(journal.rows("model"), [], precision=0.02, floor_ms=0.002)
    s0 = table.models.set_index("name").loc["efficientformerv2_s0"]
    noise = table.meta["noise_profile"]
    period = noise["typical_factor"] / noise["within_ratio"]  # the device's average state
    assert s0["typical_ms"] == pytest.approx(s0["latency_ms"] * models.within_ratio * period, rel=1e-3)
    assert s0["typical_ms"] / s0["latency_ms"] < noise["typical_factor"] - 0.1  # the blocks' in-round noise is not the models'


class SlowModelsRunner(ScriptedRunner):
    """The whole device runs 30 % slow in every fourth measurement, and every round of a whole
    model after its first falls in such a slow spell: the models' own rounds see a device slow
    most of the time, the build's rounds see it slow a quarter of the time."""

    def measure(self, prepared, policy=None, *, profile=False):
        n = len(self.calls)
        if n % 4 == 3 or (prepared.label.startswith("arch-") and self.measurements_of(prepared.label) > 0):
            self.period_calls.add(n)
        return super().measure(prepared, policy, profile=profile)


def test_whole_models_typical_latency_takes_the_device_state_of_the_whole_build(tmp_path):
    """The models' rounds span a short stretch of the build: the share of it the device spent slow
    is luck, so their typical latency takes the state read from every round (simulated vm-bursts
    device: 47 -> 100 % of subnets within 5 % of the typical latency)."""
    from latbench.measuring.noise import journal_profile

    [plan] = plan_tables(models=["efficientformerv2_s0"], resolutions=[224], out=tmp_path / "t", device_id="scripted")
    runner = SlowModelsRunner(lambda key: 1.5 if key.startswith("arch-") else 0.05 + 0.001 * (sum(map(ord, key)) % 50))
    settings = BuildSettings(min_separation_s=0.0, profile=False, jobs=1, runs=60)
    table = TableBuilder(runner, plan.out, settings).build(plan.configs, resolution=224,
                                                           calibration=plan.calibration).table
    with Journal(table.path / "journal.sqlite") as journal:
        models = journal_profile(journal.rows("model"), [], precision=0.02, floor_ms=0.002)
        rounds = [len(rs) for rs in journal.rows("model").values()]
    assert min(rounds) >= 3 and models.typical_factor > 1.15  # the models alone: mostly slow
    s0 = table.models.set_index("name").loc["efficientformerv2_s0"]
    slow_share = len(runner.period_calls) / len(runner.calls)
    device = 1 + 0.3 * slow_share  # the build's rounds: slow a quarter of the time and more
    assert s0["typical_ms"] / s0["latency_ms"] == pytest.approx(device, abs=0.04)
    assert s0["typical_ms"] / s0["latency_ms"] < models.typical_factor - 0.08
