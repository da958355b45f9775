"""The public API: what `import latbench` offers, and the README's example run as written."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from _support import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python example"
    return match.group(1)


def test_import_latbench_is_light_and_lists_the_api():
    code = ("import sys, latbench; api = set(latbench.__all__); "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'coremltools', 'pandas') if m in sys.modules)); "
            "print(sorted(api))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    heavy, names = out.splitlines()
    assert heavy == "[]"
    for name in ("load_table", "estimate", "estimate_many", "FastEstimator", "mes", "profile", "build_table",
                 "validate_table", "check_table", "Arch", "LatencyTable", "UsageError", "export_artifacts",
                 "run_search", "mes_report", "diff_tables", "repair_table", "adapt_table", "upgrade_table"):
        assert name in names


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "efficientformerv2_s0" in done.stdout and "ms" in done.stdout


def test_estimators_accept_an_arch_a_mapping_and_a_name():
    import latbench
    from latbench.space import named_arch
    from latbench.tables.synthetic import synthetic_table

    table = synthetic_table()
    arch = named_arch("efficientformerv2_s0")
    by_name = latbench.estimate(table, "efficientformerv2_s0").latency_ms
    assert latbench.estimate(table, arch).latency_ms == pytest.approx(by_name)
    assert latbench.estimate(table, arch.to_dict()).latency_ms == pytest.approx(by_name)
    from latbench.estimation.estimator import LatencyEstimator

    assert LatencyEstimator(table).estimate(arch).latency_ms == pytest.approx(by_name)
    frame = latbench.estimate_many(table, ["efficientformerv2_s0", arch, "efficientformerv2_l"])
    assert list(frame.columns[:4]) == ["name", "latency_ms", "typical_ms", "plain_sum_ms"] and len(frame) == 3
    assert frame["latency_ms"].iloc[2] > frame["latency_ms"].iloc[0]
    assert latbench.mes(table, "efficientformerv2_s0") > latbench.mes(table, "efficientformerv2_l")
    fast = latbench.FastEstimator(table)
    assert fast.score_archs([arch]).latency_ms[0] == pytest.approx(by_name)
    with pytest.raises(latbench.UsageError, match="cannot estimate a int"):
        latbench.estimate(table, 3)


def _wrong_calls():
    import latbench
    from latbench.tables.synthetic import synthetic_table

    table = synthetic_table()
    return [
        (lambda: latbench.estimate(123, "efficientformerv2_s0"), "named by its directory"),
        (lambda: latbench.load_table(None), "named by its directory"),
        (lambda: latbench.FastEstimator(3.5), "needs a latency table"),
        (lambda: latbench.FastEstimator("no/such/table"), "no latency table"),
        (lambda: latbench.FastEstimator(table).score_archs([{"stages": 1}]), "'stages' must be a list"),
        (lambda: latbench.FastEstimator(table).score_archs([7]), "cannot score 7"),
        (lambda: latbench.mes(table, "efficientformerv2_s0", latency_unit=-1), "must be a positive number"),
        (lambda: latbench.mes(table, "efficientformerv2_s0", alpha_latency="x"), "alpha"),
        (lambda: latbench.estimate(table, 3.0), "cannot estimate a float"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_wrong_api_calls_are_latbench_errors_not_type_or_attribute_errors(case):
    import latbench

    call, phrase = _wrong_calls()[case]
    with pytest.raises(latbench.LatbenchError, match=re.escape(phrase)):
        call()


def test_a_single_target_is_one_target_not_its_letters():
    import latbench
    from latbench.space.arch import named_arch
    from latbench.tables.synthetic import synthetic_table

    table = synthetic_table()
    frame = latbench.estimate_many(table, "efficientformerv2_s0")
    assert list(frame["name"]) == ["efficientformerv2_s0"]
    fast = latbench.FastEstimator(table)
    by_name = fast.score_archs(["efficientformerv2_s0"]).latency_ms[0]
    by_dict = fast.score_archs([named_arch("efficientformerv2_s0").to_dict()]).latency_ms[0]
    assert by_name == pytest.approx(by_dict) and by_name > 0


def test_the_api_covers_search_mes_report_diff_and_export_targets(tmp_path, monkeypatch):
    import latbench
    from latbench.tables.synthetic import synthetic_table

    monkeypatch.chdir(tmp_path)
    a = synthetic_table().save(tmp_path / "a")
    from latbench.tables.synthetic import _synthetic_ms

    b = synthetic_table(cost=lambda c: 2 * _synthetic_ms(c)).save(tmp_path / "b")
    diff = latbench.diff_tables(a, b)
    assert diff["common"] > 0 and diff["median_ratio"] == pytest.approx(2.0)
    report = latbench.mes_report(a, ["efficientformerv2_s0", "mobilenetv2_100"])
    assert sorted(r["name"] for r in report.json_rows()) == ["efficientformerv2_s0", "mobilenetv2_100"]
    assert sorted(tmp_path.iterdir()) == sorted([a, b])  # no report files without `out`
    result = latbench.run_search(a, "proxy", target_latency=0.9 * latbench.estimate(a, "efficientformerv2_s0").latency_ms,
                             max_steps=200, out=tmp_path / "s")
    assert result.final.latency_ms > 0 and (tmp_path / "s" / "final.yaml").is_file()
    blocks = latbench.api.export_targets(space=True, resolution=224)
    assert len(blocks) > 50
    [one] = latbench.api.export_targets(model="efficientformerv2_s0")
    assert one.name == "efficientformerv2_s0"
    with pytest.raises(latbench.UsageError, match="use --model efficientformerv2_s0"):
        latbench.api.export_targets(arch="efficientformerv2_s0")


def test_the_api_measures_on_the_configured_device(tmp_path, monkeypatch):
    from latbench import api
    from latbench.core import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LATBENCH_CONFIG", raising=False)
    (tmp_path / "latbench.toml").write_text('device = "nokia3310"\n')
    config.defaults.cache_clear()
    try:
        with pytest.raises(api.UsageError, match="unknown device 'nokia3310'"):
            api.open_device()
        with pytest.raises(api.UsageError, match="unknown device 'nokia3310'"):
            api.build_table(models=["efficientformerv2_s0"], out=tmp_path / "t")
        assert not (tmp_path / "t").exists()
    finally:
        config.defaults.cache_clear()


def test_build_table_takes_one_model_name_as_one_model(tmp_path):
    from latbench import api

    [plan] = api.plan_builds("cpu", models="efficientformerv2_s0", out=tmp_path / "t")
    assert [c.name for c in plan.calibration] == ["efficientformerv2_s0"]
    assert any(c.key.startswith("mhsa-") for c in plan.configs)
    with pytest.raises(api.UsageError, match="--max-rounds"):
        api.build_settings(rounds=5, max_rounds=3)


def test_build_settings_take_a_model_time_cap_apart_from_the_blocks():
    from latbench import api

    s = api.build_settings(time_cap=2.0, model_time_cap=1.5)
    assert s.block_time_cap_s == 2.0 and s.model_time_cap_s == 1.5
    assert s.policies()["model"].time_cap_s == 1.5
    assert api.build_settings(time_cap=2.0).model_time_cap_s == 4.0
    short = api.build_settings(min_time=0.2).policies()
    assert {p.min_time_s for p in short.values()} == {0.2}
    assert {p.min_time_s for p in api.build_settings().policies().values()} == {0.3}
    with pytest.raises(api.UsageError, match="minimum round time"):
        api.build_settings(min_time=0)
    with pytest.raises(api.UsageError, match="model time cap"):
        api.build_settings(model_time_cap=0)


@pytest.mark.parametrize("command, function", [
    ("profile", "profile"), ("export", "export_artifacts"), ("search", "run_search"), ("mes report", "mes_report"),
    ("lut build", "build_tables"), ("lut validate", "validate_table"), ("lut check", "check_table"),
    ("lut diff", "diff_tables"), ("lut repair", "repair_table"), ("lut estimate", "estimate_many"),
    ("devices", "list_devices"), ("devices --cluster", "farm_devices"), ("devices --probe", "probe_device"),
    ("agent", "serve_agent"), ("lut adapt", "adapt_table")])
def test_every_command_is_a_function_of_the_api(command, function):
    import inspect

    import latbench
    from latbench.commands import agent, devices, export, lut, mes, profile, search

    assert function in latbench.__all__ and callable(getattr(latbench, function))
    runs = {"profile": profile.run, "export": export.run, "search": search.search_from_args,
            "mes report": mes.run_report, "lut build": lut.run_build, "lut validate": lut.run_validate,
            "lut check": lut.run_check, "lut diff": lut.run_diff, "lut repair": lut.run_repair,
            "devices": devices.run, "devices --cluster": devices.run_cluster, "devices --probe": devices.run_probe,
            "agent": agent.run, "lut adapt": lut.run_adapt}
    if command in runs:  # the command calls the API rather than repeating it
        assert f"api.{function}(" in inspect.getsource(runs[command])
