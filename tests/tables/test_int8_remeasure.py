"""Whatever re-measures an int8 table measures int8 artifacts: `lut validate` and `mes report
--measure` time int8 whole models, `lut check` int8 blocks, `lut adapt` from int8 sources makes an
int8 table; a device without int8 refuses in one line. The devices are scripts (the artifacts they
are handed are the real int8 ONNX exports, read here to see what was measured)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scripted_device import ScriptedInt8Runner, ScriptedRunner, latency_following_macs

import latbench.api
from latbench.blocks.candidates import resolve_candidate
from latbench.core.errors import UsageError
from latbench.export.inspect import onnx_precision
from latbench.measuring.journal import Journal
from latbench.tables.build import BuildSettings, TableBuilder
from latbench.tables.synthetic import synthetic_table
from latbench.tables.table import LatencyTable

S0 = resolve_candidate("efficientformerv2_s0")
BLOCKS = list(dict.fromkeys(S0.blocks()))
cost = latency_following_macs(BLOCKS, other_ms=0.05)


def int8_runner() -> ScriptedInt8Runner:
    return ScriptedInt8Runner(cost, clock_step_s=0.3)


def measured_precisions(runner: ScriptedRunner) -> dict[str, str]:
    """artifact file name -> the precision its graph computes in, for everything the runner prepared."""
    return {path.name: onnx_precision(path) for path in runner.artifacts}


@pytest.fixture(scope="module")
def int8_table(tmp_path_factory) -> LatencyTable:
    """The blocks of EfficientFormerV2-S0 measured in int8 on the scripted device."""
    settings = BuildSettings(precision="int8", min_separation_s=0.0, profile=False, calibration_models=0, jobs=1)
    out = tmp_path_factory.mktemp("int8") / "t"
    return TableBuilder(int8_runner(), out, settings).build(BLOCKS).table


def test_the_table_knows_its_dtype(int8_table):
    assert int8_table.dtype == "int8"
    assert LatencyTable.load(int8_table.path).dtype == "int8"
    assert synthetic_table().dtype is None


def test_an_int8_table_of_another_recipe_is_neither_resumed_nor_fixed(int8_table, tmp_path):
    # A table whose rounds were taken on artifacts quantized another way (an older latbench's
    # default) is not resumed with today's artifacts: nothing measured, nothing written.
    out = tmp_path / "t"
    shutil.copytree(int8_table.path, out)
    with Journal(out / "journal.sqlite") as journal:
        recorded = journal.get_meta("quantization")
        journal.set_meta("quantization", {**recorded, "calibration_batches": 16})
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    runner = int8_runner()
    settings = BuildSettings(precision="int8", min_separation_s=0.0, profile=False, calibration_models=0, jobs=1)
    with pytest.raises(UsageError, match=r"another quantization recipe \(calibration_batches: 16 -> 8\); pass --force"):
        TableBuilder(runner, out, settings).build(BLOCKS)
    assert runner.calls == [] and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # Nor is it fixed by `lut check` (checking says so and measures today's artifacts).
    from latbench.tables.build import derive_table
    from latbench.tables.check import check_table

    with Journal(out / "journal.sqlite") as journal:
        derive_table(journal, out).save()
    table = LatencyTable.load(out)
    assert table.meta["quantization"]["calibration_batches"] == 16
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(UsageError, match=r"with another quantization recipe \(calibration_batches: 16 -> 8\)"):
        check_table(table, runner, keys=[BLOCKS[3].key], rounds=1, fix=True)
    assert runner.calls == [] and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    res = check_table(table, runner, keys=[BLOCKS[3].key], rounds=1)
    assert "table quantization recipe differs: calibration_batches: 16 -> 8" in res.warnings
    from latbench.estimation.validate import validate_table

    v = validate_table(table, runner, [S0], rounds=1, passes=2, jobs=1, time_cap_s=0.1)
    assert "table quantization recipe differs: calibration_batches: 16 -> 8" in v.warnings
    # The recipe it was built with resumes (nothing left to measure).
    with Journal(out / "journal.sqlite") as journal:
        journal.set_meta("quantization", recorded)
    assert TableBuilder(runner, out, settings).build(BLOCKS).measured == []


def test_validate_times_int8_whole_models(int8_table):
    from latbench.estimation.validate import validate_table

    runner = int8_runner()
    res = validate_table(int8_table, runner, [S0], rounds=1, passes=2, jobs=1, time_cap_s=0.1)
    assert len(res.rows) == 1 and res.rows[0]["measured_ms"] > 0
    seen = measured_precisions(runner)
    models = [name for name in seen if name.startswith("arch-")]
    assert models and all("-int8-" in name and seen[name] == "int8" for name in models)
    assert set(seen.values()) == {"int8"}  # the anchors too: nothing fp32 sneaks in


def test_validate_on_a_device_without_int8_is_one_line(int8_table):
    from latbench.estimation.validate import validate_table

    runner = ScriptedRunner(cost)
    with pytest.raises(UsageError, match="^scripted devices cannot run int8 artifacts") as err:
        validate_table(int8_table, runner, [S0], rounds=1, passes=2, jobs=1)
    assert "\n" not in str(err.value) and not runner.artifacts  # refused before anything was exported


def test_check_measures_int8_blocks(int8_table):
    from latbench.tables.check import check_table

    runner = int8_runner()
    keys = [b.key for b in BLOCKS[:2]]
    res = check_table(int8_table, runner, keys=keys, rounds=1)
    assert {r["key"] for r in res.rows} == set(keys)
    seen = measured_precisions(runner)
    assert seen and set(seen.values()) == {"int8"}


def test_mes_report_measures_in_the_tables_dtype(int8_table, monkeypatch):
    runners = [int8_runner(), int8_runner()]
    queue = list(runners)
    monkeypatch.setattr(latbench.api, "open_device", lambda device=None, **kw: queue.pop(0))
    # The table holds no MobileNetV2 (the default MES unit): the paper's fixed unit.
    report = latbench.api.mes_report(int8_table, ["efficientformerv2_s0"], measure="scripted", rounds=1,
                                     latency_unit="1ms")
    assert report.json_rows()[0]["measured_ms"] > 0
    seen = measured_precisions(runners[0])
    assert len(seen) == 1 and set(seen.values()) == {"int8"}
    # --dtype chooses otherwise.
    latbench.api.mes_report(int8_table, ["efficientformerv2_s0"], measure="scripted", rounds=1, dtype="fp32",
                            latency_unit="1ms")
    assert set(measured_precisions(runners[1]).values()) == {"fp32"}


def test_mes_report_measure_on_a_device_without_int8_is_one_line(int8_table, monkeypatch, run_cli):
    monkeypatch.setattr(latbench.api, "open_device", lambda device=None, **kw: ScriptedRunner(cost))
    code, out, err = run_cli("mes", "report", "efficientformerv2_s0", "--lut", str(int8_table.path),
                             "--measure", "scripted", "--latency-unit", "1ms", "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "scripted devices cannot run int8 artifacts" in err


def _int8_source(tmp_path: Path) -> Path:
    """The synthetic table marked as an int8 table (what adapt reads of its sources)."""
    table = synthetic_table()
    table.meta["settings"] = {**(table.meta.get("settings") or {}), "precision": "int8"}
    table.meta["precision"] = "int8"
    table.save(tmp_path / "int8-source")
    return tmp_path / "int8-source"


def test_adapt_from_int8_sources_makes_an_int8_table(tmp_path, monkeypatch):
    source = _int8_source(tmp_path)
    truth = {row["key"]: 1.5 * row["latency_ms"] for row in synthetic_table().blocks.to_dict("records")}
    runner = ScriptedInt8Runner(lambda key: truth.get(key, 0.05), clock_step_s=0.5)
    monkeypatch.setattr(latbench.api, "open_device", lambda device=None, **kw: runner)
    result = latbench.api.adapt_table([source], "scripted", out=tmp_path / "adapted", budget=8, calibrate=0, jobs=1)
    table = LatencyTable.load(result.table.path)
    assert table.dtype == "int8" and table.meta["precision"] == "int8"
    seen = measured_precisions(runner)
    assert len(seen) >= 8 and set(seen.values()) == {"int8"}


def test_adapt_refuses_sources_of_mixed_precision(tmp_path):
    fp32 = tmp_path / "fp32-source"
    synthetic_table().save(fp32)
    with pytest.raises(UsageError, match="^the source tables mix int8 and other precisions"):
        latbench.api.adapt_table([_int8_source(tmp_path), fp32], "scripted", out=tmp_path / "a", budget=8)


def test_mes_of_an_int8_table_scores_the_quantized_model_file(int8_table):
    from latbench.export import export_one
    from latbench.export.cache import default_cache_dir

    report = latbench.api.mes_report(int8_table, ["efficientformerv2_s0"], latency_unit="1ms")
    [row] = report.json_rows()
    size = report.mes.metric("size")
    assert size.getter == "model_mb" and size.unit == 3.0
    int8_file = Path(export_one(S0, "onnx", default_cache_dir(), precision="int8").path)
    fp32_file = Path(export_one(S0, "onnx", default_cache_dir()).path)
    assert row["metric_values"]["model_mb"] == pytest.approx(int8_file.stat().st_size / 1e6)
    assert int8_file.stat().st_size < 0.35 * fp32_file.stat().st_size  # really the quantized file
    assert row["mes"] == pytest.approx(100 * (row["metric_values"]["model_mb"] / 3.0) ** -0.5
                                       * row["latency_ms"] ** -1.0)
    # fp32 tables keep the paper's size: the parameter count.
    fp32_report = latbench.api.mes_report(synthetic_table(), ["efficientformerv2_s0"], latency_unit="1ms")
    assert fp32_report.mes.metric("size").getter == "params" and not fp32_report.json_rows()[0]["metric_values"]
