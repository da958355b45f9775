"""`lut adapt`: a new device's table from a known device's table and a few measurements on it.

A scripted pair of devices: the source is the synthetic table (made-up costs that grow with
MACs), the target a script whose latency is the source's times a factor per kind times a term
growing with MACs, plus a memory term (input elements) the transfer model's log-linear form only
approximates. The journal, the measuring session, the exports and the table files are the real
ones; nothing is timed on this host.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from scripted_device import ScriptedRunner

import latbench
import latbench.api
from latbench.blocks.candidates import sample_candidates
from latbench.blocks.configs import decompose
from latbench.core.errors import DeviceLost, UsageError
from latbench.estimation.estimator import LatencyEstimator
from latbench.measuring.journal import Journal
from latbench.space import SearchSpace
from latbench.tables.adapt import (
    calibration_models,
    kind_priority,
    plan_adapt,
    source_entries,
)
from latbench.tables.overhead import OverheadModel, attention_ms, fit_scale, fit_scales
from latbench.tables.synthetic import synthetic_table
from latbench.tables.table import LatencyTable, row_config
from latbench.tables.transfer import select_entries

#: Target / source per kind: the ratios between two real CPUs cluster by kind like this (issue 22).
#: Strided (stage-3) attention runs another operator graph: cpu -> litert moved it 0.74x where
#: stage-4 attention moved 0.99x.
KIND_FACTOR = {"stem": 1.3, "embed": 1.53, "ffn": 1.61, "mhsa": 1.79, "mhsa-strided": 1.34, "attndown": 1.86,
               "head": 2.33, "empty": 1.46, "model": 1.7}
BUDGET = 20
CALIBRATE = 1  # S0 whole: its export is small and cached; the rest of the budget goes to blocks
#: The stated accuracy: the share of entries within +-5 % of the target's truth, and the worst case.
WITHIN_5PCT = 0.85
WORST = 0.15


def target_truth(source: LatencyTable) -> dict[str, float]:
    """The target device's latency of every entry of the source table (and of S0 whole)."""
    truth = {}
    for row in source.blocks.to_dict("records"):
        config = row_config(row)
        macs = 0 if config.kind == "model" else config.macs()
        elements = math.prod(config.input_shape)
        kind = "mhsa-strided" if getattr(config, "strided", False) else config.kind
        truth[row["key"]] = (row["latency_ms"] * KIND_FACTOR[kind] * (1 + macs / 5e8) ** 0.15
                             + 3e-8 * elements)
    for cand in sample_candidates(SearchSpace.default(), 224, CALIBRATE, 0, purpose="calibration"):
        truth[cand.key] = 1.05 * OverheadModel(truth).estimate(cand.blocks())
    return truth


class TargetDevice(ScriptedRunner):
    """The scripted target: its clock advances per measurement and when it idles, never with the
    host's wall clock, so spacing rules cost no real time."""

    def __init__(self, truth: dict[str, float], **kw):
        super().__init__(lambda key: truth[key], clock_step_s=0.5, **kw)

    def describe(self):
        return {**super().describe(), "device_model": "target"}


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("source") / "cpu-table"
    synthetic_table().save(out)
    return out


@pytest.fixture(scope="module")
def truth(source_dir) -> dict[str, float]:
    return target_truth(LatencyTable.load(source_dir))


def use_devices(monkeypatch, *runners: ScriptedRunner) -> list[ScriptedRunner]:
    """latbench.api opens these runners, one per call, in order."""
    queue = list(runners)
    monkeypatch.setattr(latbench.api, "open_device", lambda device=None, **kw: queue.pop(0))
    return list(runners)


def adapt(source_dir: Path, out: Path, **kw):
    kw.setdefault("budget", BUDGET)
    kw.setdefault("calibrate", CALIBRATE)
    return latbench.adapt_table([source_dir], "scripted", out=out, jobs=1, **kw)


@pytest.fixture(scope="module")
def adapted(source_dir, truth, tmp_path_factory):
    """One adapt with budget 20; the tests below read it (copies where they change it)."""
    mp = pytest.MonkeyPatch()
    try:
        device = TargetDevice(truth)
        use_devices(mp, device)
        result = adapt(source_dir, tmp_path_factory.mktemp("adapted") / "t")
    finally:
        mp.undo()
    return result, device


def test_the_adapted_table_is_within_tolerance_of_the_targets_truth(adapted, truth):
    result, device = adapted
    table = LatencyTable.load(result.table.path)  # as written, through every integrity check
    errors = {k: ms / truth[k] - 1 for k, ms in table.latency_ms().items()}
    predicted = table.predicted()
    within = sum(abs(e) <= 0.05 for e in errors.values()) / len(errors)
    print(f"budget {BUDGET}: {within:.0%} of {len(errors)} entries within +-5 % of the target's truth, "
          f"predicted only {sum(abs(errors[k]) <= 0.05 for k in predicted) / len(predicted):.0%}, "
          f"worst {max(map(abs, errors.values())):.1%}")
    assert within >= WITHIN_5PCT
    assert max(map(abs, errors.values())) <= WORST
    # The stated uncertainty means something: most predictions are within two sigma of the truth.
    covered = sum(abs(errors[k]) <= 2 * predicted[k] / 100 for k in predicted) / len(predicted)
    print(f"predicted entries within 2 sigma: {covered:.0%}; median sigma "
          f"{sorted(predicted.values())[len(predicted) // 2]:.1f} %")
    assert covered >= 0.8
    # Strided attention, whose ratio is not plain attention's, is measured and predicted as its own
    # kind (fitted as plain attention, before, they read 9-14 % high here).
    strided = [k for k in errors if k.startswith("mhsa-") and "-s3-" in k]
    print("strided attention:", {k: f"{errors[k]:+.1%}" for k in strided})
    assert strided and any(k not in predicted for k in strided)
    assert max(abs(errors[k]) for k in strided) <= 0.05
    # Measured entries are the device's own values; the budget bounds what was measured.
    measured = [k for k in errors if k not in predicted]
    assert all(abs(errors[k]) < 0.01 for k in measured)
    assert len(measured) == BUDGET - CALIBRATE
    labels = {label for label, _, _ in device.calls}  # the anchors are measured in every session too
    assert labels == set(measured) | set(table.meta["adapt"]["calibration"]) | set(table.meta["anchors"]["keys"])
    # The baseline of the issue: the source table times one factor fitted on the same measurements
    # is off by whole kinds.
    source = LatencyTable.load(result.table.meta["adapt"]["sources"][0]["path"]).latency_ms()
    factor = statistics.median(truth[k] / source[k] for k in measured)
    baseline = sum(abs(factor * source[k] / truth[k] - 1) <= 0.05 for k in errors) / len(errors)
    print(f"one fitted factor: {baseline:.0%} within +-5 %")
    assert within > baseline + 0.2


def test_the_selection_covers_every_kind_every_stage_and_the_cost_range(source_dir):
    entries, _ = source_entries([LatencyTable.load(source_dir)])
    chosen = select_entries(list(entries.values()), 12)
    assert len(chosen) == len(set(chosen)) == 12
    picked = [entries[k] for k in chosen]
    assert {e.kind for e in picked} == {e.kind for e in entries.values()}
    assert {e.stage for e in picked if e.stage is not None} == {e.stage for e in entries.values() if e.stage is not None}
    ffn = sorted(e.source_ms for e in entries.values() if e.kind == "ffn")
    ffn_picked = [e.source_ms for e in picked if e.kind == "ffn"]
    assert len(ffn_picked) >= 2
    # The picks span the kind's cost range: the cheapest and the dearest quarter are both sampled.
    assert min(ffn_picked) <= ffn[len(ffn) // 4] and max(ffn_picked) >= ffn[3 * len(ffn) // 4]
    # Deterministic (a resumed adapt must choose the same), and extending keeps what was chosen.
    assert select_entries(list(entries.values()), 12) == chosen
    more = select_entries(list(entries.values()), 4, already=chosen)
    assert len(more) == 4 and not set(more) & set(chosen)


def test_an_adapt_weighs_its_selection_by_the_spaces_models(source_dir, tmp_path):
    # With the space known, the plan measures every kind, both stems, two empty models, and then
    # what typical models carry: another choice than by each entry's own uncertainty.
    source = LatencyTable.load(source_dir)
    entries, _ = source_entries([source])
    plan = plan_adapt([source], tmp_path / "t", budget=20, calibrate=3)
    picked = [entries[k] for k in plan.selected]
    assert len(plan.selected) == 17 and len(plan.calibration) == 3
    assert {e.transfer_kind for e in picked} == {e.transfer_kind for e in entries.values()}
    assert sorted(e.key for e in picked if e.kind == "stem") == sorted(k for k, e in entries.items()
                                                                       if e.kind == "stem")
    assert sum(e.kind == "empty" for e in picked) == 2
    assert plan.selected != select_entries(list(entries.values()), 17, kind_order=kind_priority(
        entries, source.space(), 224))


def test_entries_are_marked_and_meta_records_sources_budget_and_model(adapted, source_dir):
    result, _ = adapted
    table = LatencyTable.load(result.table.path)
    blocks = pd.read_csv(Path(result.table.path) / "blocks.csv")
    assert set(blocks["source"]) == {"measured", "predicted"}
    pred = blocks[blocks["source"] == "predicted"]
    assert pred["uncertainty_pct"].notna().all() and (pred["uncertainty_pct"] > 0).all()
    assert blocks.loc[blocks["source"] == "measured", "uncertainty_pct"].isna().all()
    assert (pred["rounds"] == 0).all()
    meta = json.loads((Path(result.table.path) / "meta.json").read_text())
    [src] = meta["adapt"]["sources"]
    assert src["path"] == str(source_dir)
    assert src["sha256"] == hashlib.sha256((source_dir / "blocks.csv").read_bytes()).hexdigest()
    assert meta["adapt"]["budget"] == BUDGET and meta["adapt"]["predicted"] == len(pred)
    model = meta["adapt"]["transfer_model"]
    assert model["fitted_on"] == BUDGET - CALIBRATE and set(model["kinds"]) == set(KIND_FACTOR)
    assert meta["overhead"]["calibrated"] and meta["overhead"]["calibrated_on"] == ["efficientformerv2_s0"]
    # It estimates like any table, saying what rests on predictions.
    est = latbench.estimate(table, "efficientformerv2_s1")
    assert est.predicted["entries"] > 0 and est.predicted["uncertainty_ms"] > 0
    assert any("predicted" in w and "lut build --upgrade" in w for w in est.warnings)


def test_lut_show_and_estimate_mark_predicted_entries(adapted, run_cli, run_cli_json):
    result, _ = adapted
    path = str(result.table.path)
    shown = run_cli_json("lut", "show", path)
    assert len(shown["predicted"]) == shown["meta"]["adapt"]["predicted"] > 0
    code, out, _ = run_cli("lut", "show", path)
    assert code == 0 and "PREDICTED" in out and "lut build --upgrade" in out
    [est] = run_cli_json("lut", "estimate", path, "efficientformerv2_s0")
    assert est["predicted"]["entries"] > 0 and est["predicted"]["uncertainty_pct"] > 0
    assert any("predicted" in w for w in est["warnings"])


def test_an_interrupted_adapt_resumes_without_re_measuring(source_dir, truth, tmp_path, monkeypatch):
    out = tmp_path / "t"
    first, second = use_devices(monkeypatch, TargetDevice(truth, lost_after=70), TargetDevice(truth))
    with pytest.raises(DeviceLost):
        adapt(source_dir, out)
    with Journal(out / "journal.sqlite") as journal:
        done = {k: len(r) for k, r in journal.rows().items()}
    assert sum(done.values()) > 20 and not (out / "blocks.csv").exists()
    result = adapt(source_dir, out)
    with Journal(out / "journal.sqlite") as journal:
        final = {k: len(r) for k, r in journal.rows().items()}
    # Every round taken before the interruption is kept; the rerun takes only the rounds missing.
    anchors = set(result.table.meta["anchors"]["keys"])  # also read as anchors, in every session
    assert all(final[k] == n + second.measurements_of(k) for k, n in done.items() if k not in anchors), \
        {k: (n, second.measurements_of(k), final[k]) for k, n in done.items()}
    assert any(n >= 3 and second.measurements_of(k) == 0 for k, n in done.items())
    assert result.reused == len([k for k in done if k in result.table.meta["adapt"]["selected"]])
    assert result.table.meta["adapt"]["measured"] == BUDGET - CALIBRATE


def test_an_adapted_table_is_rederived_from_its_journal_alone(adapted, tmp_path):
    result, _ = adapted
    shutil.copytree(result.table.path, tmp_path / "t")
    (tmp_path / "t" / "blocks.csv").write_text("key,kind\n")  # damaged; the sources are not needed to repair
    repaired = latbench.repair_table(tmp_path / "t")
    assert repaired.predicted() == pytest.approx(result.table.predicted())
    assert repaired.latency_ms() == pytest.approx(result.table.latency_ms())


def test_lut_build_upgrade_measures_the_least_certain_then_all(adapted, truth, tmp_path, monkeypatch, run_cli):
    result, _ = adapted
    out = tmp_path / "t"
    shutil.copytree(result.table.path, out)
    before = LatencyTable.load(out).predicted()
    least = sorted(before, key=lambda k: -before[k])[:3]
    # The whole models a full build calibrates on, 5 % slower than their blocks' sum on the target.
    models = sample_candidates(SearchSpace.default(), 224, 8, 0, purpose="calibration")
    world = {**truth, **{c.key: 1.05 * OverheadModel(truth).estimate(c.blocks()) for c in models}}
    first, second = use_devices(monkeypatch, TargetDevice(truth), TargetDevice(world))
    upgraded = latbench.upgrade_table(out, count=3).table
    assert set(before) - set(upgraded.predicted()) == set(least)
    assert {label for label, _, _ in first.calls} - set(upgraded.meta["anchors"]["keys"]) == \
        set(least) - set(upgraded.meta["anchors"]["keys"])  # no whole model while entries stay predicted
    assert upgraded.meta["overhead"]["calibrated_on"] == ["efficientformerv2_s0"]
    # Plain `lut build --out` on an adapted table measures all that is still predicted, and, as it
    # leaves nothing predicted, the whole models of a full build (S0, measured by the adapt, not again).
    code, _, err = run_cli("lut", "build", "--out", str(out), "--device", "scripted", "--no-progress")
    assert code == 0, err
    final = LatencyTable.load(out)
    assert final.predicted() == {} and set(final.blocks["source"]) == {"measured"}
    assert all(abs(ms / truth[k] - 1) < 0.01 for k, ms in final.latency_ms().items())
    measured_whole = {label for label, _, _ in second.calls} & {c.key for c in models}
    assert measured_whole == {c.key for c in models[1:]} and models[0].name == "efficientformerv2_s0"
    overhead = final.meta["overhead"]
    assert sorted(overhead["calibrated_on"]) == sorted(c.name for c in models)
    assert all(v == pytest.approx(1.05, rel=0.02) for g, v in overhead["scales"].items() if g != "weights")
    code, _, err = run_cli("lut", "build", "--upgrade", "--out", str(out), "--device", "scripted")
    assert code == 2 and "no predicted entries" in err and len(err.strip().splitlines()) == 1


def test_lut_diff_checks_predicted_entries_against_a_measured_table(adapted, truth, tmp_path, run_cli,
                                                                    run_cli_json):
    result, _ = adapted
    path = Path(result.table.path)
    shutil.copytree(path, tmp_path / "full")
    full = LatencyTable.load(tmp_path / "full")
    # The same device measured in full on another hour: every entry at its truth, on a time base 10 % slower.
    full.blocks["latency_ms"] = [1.1 * truth[k] for k in full.blocks["key"]]
    full.blocks["source"] = "measured"
    full.blocks["uncertainty_pct"] = math.nan
    full.save()
    table = LatencyTable.load(path)
    predicted, ms = table.predicted(), table.latency_ms()
    check = run_cli_json("lut", "diff", str(path), str(tmp_path / "full"))["predictions"]
    assert check["predicted_in"] == "a" and check["count"] == len(predicted)
    assert check["time_base"] == pytest.approx(1 / 1.1, rel=0.01)  # the measured entries' ratio, taken out
    errors = {k: 100 * (ms[k] / (check["time_base"] * 1.1 * truth[k]) - 1) for k in predicted}
    assert check["mean_abs_error_pct"] == pytest.approx(statistics.fmean(map(abs, errors.values())))
    assert check["max_abs_error_pct"] == pytest.approx(max(map(abs, errors.values())))
    assert check["within_2_sigma"] == sum(abs(errors[k]) <= 2 * predicted[k] for k in predicted) / len(predicted)
    assert check["within_1_sigma"] < check["within_2_sigma"] or check["within_2_sigma"] == 1.0
    assert check["worst"][0]["key"] == max(errors, key=lambda k: abs(errors[k]))
    assert check["worst"][0]["uncertainty_pct"] == pytest.approx(predicted[check["worst"][0]["key"]])
    swapped = latbench.diff_tables(tmp_path / "full", path)["predictions"]
    assert swapped["predicted_in"] == "b" and swapped["mean_abs_error_pct"] == pytest.approx(check["mean_abs_error_pct"])
    code, out, err = run_cli("lut", "diff", str(path), str(tmp_path / "full"))
    assert code == 0, err
    assert f"predicted entries of A against B's measurements: {len(predicted)}, mean |error|" in out
    # A table of another device: its ratios are the devices' difference, not prediction errors.
    assert latbench.diff_tables(path, result.table.meta["adapt"]["sources"][0]["path"])["predictions"] is None
    assert latbench.diff_tables(tmp_path / "full", tmp_path / "full")["predictions"] is None  # nothing predicted


def test_lut_adapt_reports_the_level_check_of_a_short_session(source_dir, truth, tmp_path, monkeypatch, run_cli):
    """An adapt that ends before its level span reads its anchors, idling, until then; `lut adapt`
    says what it found (and --json: level_check)."""
    monkeypatch.setenv("LATBENCH_LEVEL_SPAN_S", "200")
    first, second, third = use_devices(monkeypatch, TargetDevice(truth), TargetDevice(truth), TargetDevice(truth))
    code, out, err = run_cli("lut", "adapt", str(source_dir), "--device", "scripted", "--budget", "8",
                             "--calibrate", "0", "--out", str(tmp_path / "a"), "--json", "--no-progress")
    assert code == 0, err
    level = json.loads(out)["level_check"]
    assert level["span_s"] == 200 and level["faster"] is False and level["from_s"] < 200 <= level["to_s"]
    entries = set(LatencyTable.load(tmp_path / "a").meta["adapt"]["selected"])
    last = max(i for i, c in enumerate(first.calls) if c[0] in entries)
    assert len(first.calls) - last > 20  # anchor readings, 2 s of idle apart, until the span was up
    code, out, err = run_cli("lut", "adapt", str(source_dir), "--device", "scripted", "--budget", "8",
                             "--calibrate", "0", "--out", str(tmp_path / "b"), "--no-progress")
    assert code == 0, err
    assert "level check: measuring took" in out and "anchors read until 2" in out and "held their level" in out
    # An upgrade is put on the adapt's time base by its anchors: it reads no more of them.
    code, out, err = run_cli("lut", "build", "--upgrade", "2", "--out", str(tmp_path / "a"), "--device", "scripted",
                             "--json", "--no-progress")
    assert code == 0, err
    assert json.loads(out)[0]["level_check"] is None and len(third.calls) < 20


@pytest.mark.parametrize("other", ["space", "resolution"])
def test_a_source_of_another_space_or_resolution_is_refused_in_one_line(source_dir, tmp_path, run_cli, other):
    if other == "space":
        definition = SearchSpace.default().to_dict()
        definition["stages"][0]["widths"] = [32, 48]
        table = synthetic_table(SearchSpace.from_dict(definition))
    else:
        definition = {**SearchSpace.default().to_dict(), "resolutions": [224, 256]}
        table = synthetic_table(SearchSpace.from_dict(definition), resolution=256)
    table.save(tmp_path / "other")
    code, out, err = run_cli("lut", "adapt", str(source_dir), str(tmp_path / "other"), "--device", "scripted",
                             "--out", str(tmp_path / "t"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and other in err
    assert not (tmp_path / "t").exists()


def test_a_budget_below_the_number_of_kinds_measures_the_heaviest_kinds(source_dir, truth, tmp_path, monkeypatch):
    source = LatencyTable.load(source_dir)
    entries, _ = source_entries([source])
    kinds = {e.transfer_kind for e in entries.values()}
    order = kind_priority(entries, source.space(), 224)
    assert set(order) == kinds and len(kinds) > 5
    # The order follows the kinds' share of typical models (FFNs carry most of them here); the
    # whole reference model is in none of them.
    assert order[0] == "ffn" and order[-1] == "model"
    first, second = use_devices(monkeypatch, TargetDevice(truth), TargetDevice(truth))
    result = adapt(source_dir, tmp_path / "t", budget=5, calibrate=0)
    table = LatencyTable.load(result.table.path)
    meta = table.meta["adapt"]
    assert meta["measured"] == 5 and meta["calibration"] == []
    assert [entries[k].transfer_kind for k in meta["selected"]] == order[:5]
    assert meta["unmeasured_kinds"] == sorted(order[5:])
    # An unmeasured kind borrows the pooled ratio: its predictions say they are less certain than
    # those of the measured kinds, and that larger uncertainty still covers most of the truth.
    predicted = table.predicted()
    borrowed = [k for k in predicted if entries[k].transfer_kind in meta["unmeasured_kinds"]]
    own = [k for k in predicted if entries[k].transfer_kind not in meta["unmeasured_kinds"]]
    assert borrowed and own
    assert statistics.median(predicted[k] for k in borrowed) > 1.5 * statistics.median(predicted[k] for k in own)
    errors = {k: abs(ms / truth[k] - 1) for k, ms in table.latency_ms().items()}
    assert sum(errors[k] <= 2 * predicted[k] / 100 for k in borrowed) / len(borrowed) >= 0.8
    # A larger budget keeps the five and covers every kind.
    more = adapt(source_dir, tmp_path / "t", budget=10, calibrate=0).table.meta["adapt"]
    assert more["selected"][:5] == meta["selected"] and more["unmeasured_kinds"] == []
    assert {entries[k].transfer_kind for k in more["selected"]} == kinds


@pytest.mark.parametrize("budget, blocks, models", [(1, 1, 0), (2, 2, 0), (4, 2, 2), (5, 2, 3), (10, 7, 3),
                                                    (20, 17, 3)])
def test_whole_models_take_their_share_of_the_budget_before_blocks(source_dir, tmp_path, budget, blocks, models):
    plan = plan_adapt([LatencyTable.load(source_dir)], tmp_path / "t", budget=budget)
    assert len(plan.selected) == blocks and len(plan.calibration) == models
    assert [c.name for c in plan.calibration][:1] == (["efficientformerv2_s0"] if models else [])
    if models == 3:  # two sampled models and the twin of one: a scale for attention, one for the rest
        attention = [sum(s.attention for s in c.arch.stages) for c in plan.calibration]
        assert attention[2] == 0 < attention[1] and plan.calibration[2].name.endswith("-noattn")


def test_bad_budgets_and_an_out_holding_another_table_are_refused(source_dir, tmp_path, run_cli):
    for bad in ("0", "-3"):
        code, _, err = run_cli("lut", "adapt", str(source_dir), "--device", "scripted", "--budget", bad,
                               "--out", str(tmp_path / "t"))
        assert code == 2 and "--budget" in err and "at least 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()
    code, _, err = run_cli("lut", "adapt", str(source_dir), "--device", "scripted", "--out", str(source_dir))
    assert code == 2 and "holds another table" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="at least one"):
        plan_adapt([], tmp_path / "t")
    with pytest.raises(UsageError, match="not saved"):
        plan_adapt([synthetic_table()], tmp_path / "t")


def test_tables_written_before_adapted_tables_still_load(source_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(source_dir, old)
    blocks = pd.read_csv(old / "blocks.csv").drop(columns=["source", "uncertainty_pct"])
    text = blocks.to_csv(index=False)
    (old / "blocks.csv").write_text(text)
    meta = json.loads((old / "meta.json").read_text())
    meta["files"]["blocks.csv"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (old / "meta.json").write_text(json.dumps(meta))
    table = LatencyTable.load(old)
    assert table.predicted() == {} and not latbench.estimate(table, "efficientformerv2_s0").predicted


def test_lut_adapt_from_the_command_line(source_dir, truth, tmp_path, monkeypatch, run_cli):
    use_devices(monkeypatch, TargetDevice(truth), TargetDevice(truth), TargetDevice(truth))
    args = ("lut", "adapt", str(source_dir), "--device", "scripted", "--budget", "10", "--calibrate", "0",
            "--out", str(tmp_path / "t"), "--no-progress")
    code, out, err = run_cli(*args, "--json")
    assert code == 0, err
    summary = json.loads(out)["adapt"]
    assert summary["measured"] == 10 and summary["predicted"] == 102 - 10 and summary["budget"] == 10
    assert summary["median_uncertainty_pct"] > 0 and len(summary["selected"]) == 10
    code, out, err = run_cli(*args)  # rerun: resumes, measures nothing more, reports in text
    assert code == 0, err
    assert "measured 0 (key, round) pairs now" in out and "92 predicted" in out and "--upgrade" in out
    # A larger budget adds to what was chosen and measured; nothing chosen before is dropped.
    code, out, err = run_cli(*[a if a != "10" else "12" for a in args], "--json")
    assert code == 0, err
    more = json.loads(out)
    assert more["adapt"]["selected"][:10] == summary["selected"] and more["adapt"]["measured"] == 12
    assert more["reused"] == 10


def test_lut_validate_and_mes_report_work_on_an_adapted_table(adapted, truth, monkeypatch, run_cli, run_cli_json):
    result, _ = adapted
    path = str(result.table.path)
    table = LatencyTable.load(path)
    # The scripted target times whole subnets as its truth says (its blocks, with overhead, 5 % slower
    # end to end, like the calibration model it was adapted with).
    cands = latbench.api.validation_candidates(table, 3, 0, named=False)
    whole = {c.key: 1.05 * OverheadModel(truth).estimate(c.blocks()) for c in cands}
    use_devices(monkeypatch, TargetDevice({**truth, **whole}))
    v = run_cli_json("lut", "validate", path, "--device", "scripted", "--samples", "3", "--no-named", "--rounds",
                     "2", "--passes", "2", "--jobs", "1")
    assert v["n"] == 3 and [m["name"] for m in v["models"]] == [c.name for c in cands]
    # Its estimates rest on 19 measured entries and 83 predicted ones, and still land near the truth.
    assert v["mean_abs_pct_error"] < 5 and v["within_10pct"] == 1.0
    [row] = run_cli_json("mes", "report", "--lut", path, "efficientformerv2_s0")
    est = latbench.estimate(table, "efficientformerv2_s0")
    assert row["latency_ms"] == pytest.approx(est.latency_ms) and row["mes"] > 0


def test_lut_adapt_measures_on_a_device_farm(source_dir, tmp_path, monkeypatch, run_cli_json):
    pytest.importorskip("ray", reason="the device farm needs the 'cluster' extra")
    from latbench.measuring.farm.names import apply_ray_environment

    apply_ray_environment(loopback=True)
    from farm_devices import scripted

    from latbench.measuring.farm.cluster import start_local

    fakes = Path(__file__).resolve().parents[1] / "fakes"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(fakes), os.environ.get("PYTHONPATH")) if p))
    # Each device actor opens its scripted device itself, as it opens a real one.
    monkeypatch.setattr(latbench.api, "runner_opener", lambda device_id, options: scripted(device_id, sleep_s=0.0))
    stop = start_local()
    try:
        out = tmp_path / "t"
        summary = run_cli_json("lut", "adapt", str(source_dir), "--device", "scripted:A", "--device", "scripted:B",
                               "--budget", "6", "--calibrate", "0", "--out", str(out), "--jobs", "1", "--no-progress")
    finally:
        stop()
    assert summary["adapt"]["measured"] == 6 and summary["adapt"]["predicted"] == 102 - 6
    with Journal(out / "journal.sqlite") as journal:
        rows = [r for rs in journal.rows().values() for r in rs]
    # Both devices measured rounds of the chosen entries, and nothing else was measured.
    assert {r.device for r in rows} == {"scripted:A", "scripted:B"}
    assert {r.key for r in rows} == set(summary["adapt"]["selected"])
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["devices"]) == {"scripted:A", "scripted:B"} and meta["pool"]["fastest"] in meta["devices"]
    assert len(LatencyTable.load(out).predicted()) == 102 - 6


def test_lut_adapt_measures_artifacts_of_the_dtype_asked_for(source_dir, truth, tmp_path, monkeypatch, run_cli,
                                                             run_cli_json):
    use_devices(monkeypatch, TargetDevice(truth), TargetDevice(truth))
    out = tmp_path / "t"
    args = ("lut", "adapt", str(source_dir), "--device", "scripted", "--budget", "3", "--calibrate", "0",
            "--out", str(out), "--jobs", "1", "--no-progress")
    run_cli_json(*args, "--dtype", "fp16")
    meta = json.loads((out / "meta.json").read_text())
    # fp32 sources, an fp16 target: the table says what it measured.
    assert meta["precision"] == "fp16" and meta["adapt"]["measured"] == 3
    code, _, err = run_cli(*args)  # the same table in fp32 artifacts: another runtime, refused in one line
    assert code == 2 and "another device or runtime" in err and len(err.strip().splitlines()) == 1


def test_three_calibration_models_are_two_sampled_and_the_attention_free_twin_of_one(source_dir, tmp_path):
    source = LatencyTable.load(source_dir)
    plan = plan_adapt([source], tmp_path / "t", budget=20)
    entries, _ = source_entries([source])
    sampled = sample_candidates(SearchSpace.default(), 224, 2, 0, purpose="calibration")
    assert len(plan.calibration) == 3 and plan.calibration[:2] == sampled and len(plan.selected) == 17
    twin = plan.calibration[2].arch
    assert all(s.attention == 0 for s in twin.stages) and twin.name.endswith("-noattn")

    def attention_ms(arch) -> float:
        return sum(entries[b.key].source_ms for b in decompose(arch) if b.kind == "mhsa")

    # The twin of the sampled model with the most attention: the same widths and depths.
    original = max(sampled, key=lambda c: attention_ms(c.arch) / sum(entries[b.key].source_ms
                                                                     for b in c.blocks()))
    assert attention_ms(original.arch) > 0 and attention_ms(twin) == 0
    assert (twin.widths, twin.depths) == (original.arch.widths, original.arch.depths)
    assert twin.without_attention() == twin and original.arch.without_attention() == twin
    # Below three models, no twin: the calibration stream as before.
    assert calibration_models(SearchSpace.default(), 224, 2, 0, entries) == sampled


def test_whole_models_whose_attention_costs_more_than_its_blocks_are_calibrated_by_the_twin(
        source_dir, truth, tmp_path, monkeypatch):
    """Inside a whole model attention costs more than its isolated blocks, the rest as much (the
    `litert --xnnpack off` pair: 1.21-1.40x against 1.02x). One scale from three sampled models
    splits the difference; the twin pair tells the two apart."""
    def world_of(models):
        model = OverheadModel(truth)
        return {**truth, **{c.key: 1.35 * attention_ms(model.parts(c.blocks())) + model.parts(c.blocks())["rest"]
                            for c in models}}

    space = SearchSpace.default()
    entries, _ = source_entries([LatencyTable.load(source_dir)])
    models = calibration_models(space, 224, 3, 0, entries)
    use_devices(monkeypatch, TargetDevice(world_of(models)))
    table = LatencyTable.load(adapt(source_dir, tmp_path / "t", calibrate=3).table.path)
    scales = table.meta["overhead"]["scales"]
    assert scales["attention"] > scales["rest"] + 0.2
    subnets = sample_candidates(space, 224, 20, 7, named=False)
    truths = world_of(subnets)
    estimator = LatencyEstimator(table)
    errors = [estimator.estimate(c).latency_ms / truths[c.key] - 1 for c in subnets]
    within = sum(abs(e) <= 0.05 for e in errors) / len(errors)
    # The same blocks, one scale fitted on three sampled models, as the adapt calibrated before.
    sampled = sample_candidates(space, 224, 3, 0, purpose="calibration")
    kept = OverheadModel(table.latency_ms())
    sampled_world = world_of(sampled)
    def total(c) -> float:
        parts = kept.parts(c.blocks())
        return attention_ms(parts) + parts["rest"]

    one = fit_scale([total(c) for c in sampled], [sampled_world[c.key] for c in sampled])
    one_errors = [one * total(c) / truths[c.key] - 1 for c in subnets]
    one_within = sum(abs(e) <= 0.05 for e in one_errors) / len(one_errors)
    print(f"subnets within 5 %: twin {within:.0%}, one scale {one_within:.0%}; scales {scales}, one {one:.3f}")
    assert within >= 0.9 and within > one_within


def test_a_calibration_model_slow_in_every_round_leaves_an_adapts_fit(source_dir, truth, tmp_path, monkeypatch):
    # An adapt calibrates on three whole models, below the minimum a fit otherwise keeps: one
    # read 41 % slow in three agreeing rounds on a host switching states every few seconds.
    entries, _ = source_entries([LatencyTable.load(source_dir)])
    models = calibration_models(SearchSpace.default(), 224, 3, 0, entries)
    world = dict(truth)
    for cand in models:
        world[cand.key] = 1.05 * OverheadModel(truth).estimate(cand.blocks())
    slow = models[1]
    use_devices(monkeypatch, TargetDevice({**world, slow.key: 1.41 * world[slow.key]}))
    table = LatencyTable.load(adapt(source_dir, tmp_path / "t", calibrate=3).table.path)
    overhead = table.meta["overhead"]
    assert overhead["left_out"] == [slow.name]
    assert overhead["calibrated_on"] and slow.name not in overhead["calibrated_on"]
    assert overhead["scales"]["rest"] == pytest.approx(1.05, rel=0.04)
    flags = dict(zip(table.models["name"], table.models["flags"]))
    assert "slow-outlier" in (flags[slow.name] or "")
    # Kept, the slow model would have pulled a scale well off.
    kept = OverheadModel(table.latency_ms())
    plain = fit_scales([kept.parts(c.blocks()) for c in models],
                       [1.41 * world[c.key] if c is slow else world[c.key] for c in models])
    assert max(c for g, c in plain.items() if g != "weights") > 1.05 * 1.06
