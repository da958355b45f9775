"""`lut validate` puts each pass on the table's time base by the table's own whole models (its
calibration models measured again), not by the three small anchor blocks alone: on this
project's 2-core VM the anchors read a validation pass 10 % slower than the build while the
models ran as fast as in the table. The device is a script; the models are real exports."""

from __future__ import annotations

import pytest
from scripted_device import ScriptedRunner

from latbench.blocks.candidates import resolve_candidate
from latbench.estimation.validate import reference_models, validate_table
from latbench.tables.build import BuildSettings, TableBuilder
from latbench.tables.table import LatencyTable

S0 = resolve_candidate("efficientformerv2_s0")
S1 = resolve_candidate("efficientformerv2_s1")
BLOCKS = list(dict.fromkeys(S0.blocks() + S1.blocks()))
BLOCK_MS = {b.key: 0.02 + 1.5e-9 * b.macs() for b in BLOCKS}
MODEL_MS = {c.key: 1.1 * sum(BLOCK_MS[b.key] for b in c.blocks()) for c in (S0, S1)}


def latency(key: str) -> float:
    return BLOCK_MS.get(key) or MODEL_MS.get(key) or 0.05


class SlowAnchorsRunner(ScriptedRunner):
    """The script, with everything `speed` times slower and the anchor blocks `anchors` times on top."""

    def __init__(self, anchor_keys=(), anchors: float = 1.0, **kw) -> None:
        super().__init__(latency, clock_step_s=0.3, **kw)
        self.anchor_keys, self.anchor_factor = set(anchor_keys), anchors

    def measure(self, prepared, policy=None, *, profile=False):
        if prepared.handle in self.anchor_keys:
            self.slowdowns[prepared.handle] = [self.anchor_factor]
        return super().measure(prepared, policy, profile=profile)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> LatencyTable:
    settings = BuildSettings(min_separation_s=0.0, profile=False, jobs=1)
    out = tmp_path_factory.mktemp("validate") / "t"
    return TableBuilder(SlowAnchorsRunner(), out, settings).build(BLOCKS, calibration=[S0, S1]).table


def test_the_table_names_its_whole_models_for_a_later_session(table):
    refs = dict((c.key, ms) for c, ms in LatencyTable.load(table.path).reference_models())
    assert set(refs) == {S0.key, S1.key}
    assert refs[S0.key] == pytest.approx(MODEL_MS[S0.key], rel=0.01)


@pytest.mark.parametrize("speed, anchors, warned", [(1.0, 1.15, True), (1.2, 1.0, False)],
                         ids=["anchors-slow-alone", "device-slower"])
def test_a_pass_is_put_on_the_time_base_by_the_tables_models(table, speed, anchors, warned):
    anchor_keys = [k for k in (table.meta.get("anchors") or {}).get("keys") or []]
    assert anchor_keys
    runner = SlowAnchorsRunner(anchor_keys, anchors, speed=speed)
    res = validate_table(table, runner, [S0], rounds=1, passes=2, jobs=1, time_cap_s=0.1)
    assert [r["name"] for r in res.rows] == [S0.name]  # S1 measured for the time base only
    assert res.noise["time_base"] == "models" and set(res.noise["reference_models"]) == {S0.name, S1.name}
    assert res.noise["time_base_factors"] == pytest.approx([1 / speed] * 2, rel=0.01)
    assert res.noise["anchor_factors"] == pytest.approx([1 / (speed * anchors)] * 2, rel=0.01)
    assert res.rows[0]["measured_ms"] == pytest.approx(MODEL_MS[S0.key], rel=0.01)  # as fast as at build
    assert any("anchors read the device 15% slower" in w for w in res.warnings) == warned


def test_a_model_read_slow_in_one_pass_is_measured_again_and_judged_by_its_agreeing_passes(table, monkeypatch):
    # Put on the time base by the anchors: a model's slow pass then moves no other model's value.
    monkeypatch.setattr(LatencyTable, "reference_models", lambda self: [])
    runner = SlowAnchorsRunner()
    runner.slow(S1.key, 1.4)  # its one round of the first pass
    res = validate_table(table, runner, [S0, S1], rounds=1, passes=2, jobs=1, time_cap_s=0.1)
    rows = {r["name"]: r for r in res.rows}
    assert res.noise["time_base"] == "anchors" and res.noise["extra_passes"] == 1
    assert rows[S1.name]["pass_ms"][1:] == pytest.approx([MODEL_MS[S1.key]] * 2, rel=0.01)
    assert rows[S1.name]["pass_ms"][0] == pytest.approx(1.4 * MODEL_MS[S1.key], rel=0.01)
    assert rows[S0.name]["pass_ms"][2] is None  # the extra pass measured only what disagreed
    assert rows[S1.name]["measured_ms"] == pytest.approx(MODEL_MS[S1.key], rel=0.01)
    assert rows[S1.name]["slow_pass_ms"] == [rows[S1.name]["pass_ms"][0]] and rows[S1.name]["passes_agree"]
    assert rows[S1.name]["pass_noise_pct"] < 1.0
    assert any("1 model(s) read more than 10% slower in a pass" in w and S1.name in w for w in res.warnings)


def test_the_references_are_the_models_the_build_trusted_most(table):
    trusting = LatencyTable.load(table.path)
    assert trusting.doubted_models() == set()
    fit = {S0.name: -4.0, S1.name: 1.0}
    trusting.meta["overhead"] = {**trusting.meta["overhead"], "calibrated_on": list(fit),
                                 "fit_errors_pct": list(fit.values())}
    # Closest to the calibration fit first: S1, although S0 is the one validated anyway.
    assert [c.name for c, _ in reference_models(trusting)] == [S1.name, S0.name]
    trusting.models["flags"] = ["slow-outlier" if k == S1.key else None for k in trusting.models["key"]]
    assert trusting.doubted_models() == {S1.key}
    assert [c.name for c, _ in reference_models(trusting)] == [S0.name, S1.name]
    trusting.models["flags"] = None
    trusting.meta["overhead"]["left_out"] = [S0.name]
    assert trusting.doubted_models() == {S0.key}
    assert [c.name for c, _ in reference_models(trusting)] == [S1.name, S0.name]
