import argparse
import json

import pandas as pd
import pytest
import yaml
from _support import latbench_subprocess

from latbench.blocks.configs import arch_params
from latbench.space import Arch, SearchSpace, StageArch
from latbench.tables.synthetic import synthetic_table

SMALL = {
    "name": "small",
    "resolutions": [224],
    "stages": [
        {"widths": [32, 40], "depth": [1, 2], "expansions": [2, 3, 4]},
        {"widths": [48, 64], "depth": [1, 2], "expansions": [2, 3, 4]},
        {"widths": [96, 120], "depth": [2, 6], "expansions": [2, 3, 4], "attention": True},
        {"widths": [176, 224], "depth": [2, 4], "expansions": [2, 3, 4], "attention": True},
    ],
}
TINY = Arch((StageArch(32, (2,)), StageArch(48, (2,)), StageArch(96, (2, 2), 0), StageArch(176, (2, 2), 0)), 224)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    space = SearchSpace.from_dict(SMALL, source="small")
    full = synthetic_table(space).save(root / "full")
    noref = synthetic_table(space, reference_ms=None).save(root / "noref")
    return {"full": str(full), "noref": str(noref)}


def one_line_error(run_cli, *args, code=2):
    rc, out, err = run_cli(*args)
    assert rc == code, (rc, out, err)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("latbench: error:"), err
    return lines[0]


def test_mes_report_json_files_and_reference_model(run_cli_json, tables, tmp_path):
    arch_file = tmp_path / "tiny.yaml"
    TINY.save(arch_file)
    out = tmp_path / "rep"
    rows = run_cli_json("mes", "report", "--lut", tables["full"], "efficientformerv2_s0", "mobilenetv2_100",
                        str(arch_file), "--out", str(out))
    by = {r["name"]: r for r in rows}
    assert set(by) == {"efficientformerv2_s0", "mobilenetv2_100", "tiny"}
    for r in rows:
        assert {"name", "params", "latency_ms", "mes", "accuracy", "pareto", "rank", "mes_constants"} <= set(r)
    # MobileNetV2 is the latency unit: its latency term is 1, so MES = 100 * (params / 3M)^-0.5.
    mnv2 = by["mobilenetv2_100"]
    assert mnv2["latency_ms"] == pytest.approx(3.0)
    assert mnv2["mes"] == pytest.approx(100 * (3_504_872 / 3e6) ** -0.5)
    assert mnv2["accuracy"] == 71.8 and mnv2["accuracy_source"] == "published: MobileNetV2 paper"
    assert by["efficientformerv2_s0"]["accuracy"] == 76.2
    assert by["tiny"]["accuracy"] is None and by["tiny"]["params"] == arch_params(TINY)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["mes_constants"]["metrics"][1]["unit_desc"].startswith("mobilenetv2_100 on")
    for name in ("report.md", "report.html", "report.csv", "accuracy_latency.png", "accuracy_latency.svg",
                 "latency_breakdown.png", "latency_breakdown.svg"):
        assert (out / name).is_file()
    assert len(pd.read_csv(out / "report.csv")) == 3


def test_mes_report_yaml_list_accuracy_file_and_constants(run_cli, run_cli_json, tables, tmp_path):
    cands = tmp_path / "cands.yaml"
    cands.write_text(yaml.safe_dump(["efficientformerv2_s0", {**TINY.to_dict(), "name": "tiny"}]))
    acc = tmp_path / "acc.csv"
    acc.write_text("name,top1\ntiny,61.0\n")
    cfg = tmp_path / "mes.yaml"
    cfg.write_text("metrics: {memory: {value: 'column:peak_mb', unit: 20, alpha: 0.5, unit_label: MB}}\n")
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("name,peak_mb\ntiny,5\nefficientformerv2_s0,80\n")
    rows = run_cli_json("mes", "report", "--lut", tables["full"], str(cands), "--accuracy", str(acc),
                        "--latency-unit", "1ms", "--alpha-size", "0.25", "--out", str(tmp_path / "r"),
                        "--mes-config", str(cfg), "--metrics", str(metrics))
    by = {r["name"]: r for r in rows}
    tiny = by["tiny"]
    assert tiny["accuracy"] == 61.0 and "user-provided" in tiny["accuracy_source"]
    # 100 * (params / 3M)^-0.25 * (latency / 1 ms)^-1 * (5 MB / 20 MB)^-0.5
    assert tiny["mes"] == pytest.approx(100 * (tiny["params"] / 3e6) ** -0.25 * tiny["latency_ms"] ** -1 * 2.0)
    assert tiny["mes_constants"]["metrics"][2] == {"name": "memory", "value": "column:peak_mb", "unit": 20.0,
                                                   "alpha": 0.5, "unit_desc": "MB"}
    assert by["efficientformerv2_s0"]["pareto"] is True
    # Human output prints every constant.
    rc, out, _ = run_cli("mes", "report", "--lut", tables["full"], str(cands), "--latency-unit", "1ms",
                         "--alpha-size", "0.25", "--out", str(tmp_path / "r2"))
    assert rc == 0 and "alpha=0.25" in out and "U=1 ms" in out and "U=3,000,000 params" in out


def test_mes_report_measure_on_cpu(run_cli_json, tables, tmp_path):
    arch_file = tmp_path / "tiny.yaml"
    TINY.save(arch_file)
    rows = run_cli_json("mes", "report", "--lut", tables["full"], str(arch_file), "--measure", "cpu",
                        "--rounds", "1", "--threads", "1", "--latency-unit", "1ms", "--out", str(tmp_path / "m"))
    (row,) = rows
    assert row["measured_ms"] > 0
    assert row["mes_measured"] == pytest.approx(100 * (row["params"] / 3e6) ** -0.5 * row["measured_ms"] ** -1)
    assert "measured_ms" in pd.read_csv(tmp_path / "m" / "report.csv").columns


def test_mes_report_bad_inputs(run_cli, tables, tmp_path):
    msg = one_line_error(run_cli, "mes", "report", "--lut", tables["full"], "mobilevit_xs", "--out", str(tmp_path))
    assert "model-mobilevit_xs-r224" in msg and "latbench lut build" in msg
    msg = one_line_error(run_cli, "mes", "report", "--lut", tables["noref"], "efficientformerv2_s0",
                         "--out", str(tmp_path))
    assert f"latbench lut build --device synthetic --model mobilenetv2_100 --out {tables['noref']}" in msg
    bad = tmp_path / "acc.csv"
    bad.write_text("name,top1\nefficientformerv2_s0,very good\n")
    msg = one_line_error(run_cli, "mes", "report", "--lut", tables["full"], "efficientformerv2_s0",
                         "--accuracy", str(bad), "--out", str(tmp_path))
    assert "not a number" in msg
    one_line_error(run_cli, "mes", "report", "--lut", tables["full"], "no_such_model", "--out", str(tmp_path))
    one_line_error(run_cli, "mes", "report", "--lut", str(tmp_path / "nothing"), "efficientformerv2_s0")
    one_line_error(run_cli, "mes", "report", "--lut", tables["full"], "efficientformerv2_s0", "--alpha-size", "nan",
                   "--out", str(tmp_path))
    cfg = tmp_path / "mes.yaml"
    cfg.write_text("metrics: {memory: {value: 'column:peak_mb', unit: 20, alpha: 0.5}}\n")
    assert "--metrics CSV" in one_line_error(run_cli, "mes", "report", "--lut", tables["full"],
                                             "efficientformerv2_s0", "--mes-config", str(cfg), "--out", str(tmp_path))
    a_file = tmp_path / "taken"
    a_file.write_text("")
    assert "is a file" in one_line_error(run_cli, "mes", "report", "--lut", tables["full"], "efficientformerv2_s0",
                                         "--out", str(a_file))
    assert not (tmp_path / "report.md").exists()


def test_search_cli_with_proxy(run_cli_json, tables, tmp_path):
    out = tmp_path / "s"
    data = run_cli_json("search", "--lut", tables["full"], "--accuracy", "proxy", "--target-latency", "4",
                        "--out", str(out), "--seed", "3")
    assert data["reached"] is True and data["final"]["latency_ms"] <= 4
    assert data["oracle"]["is_proxy"] is True and "PROXY" in data["oracle"]["label"]
    assert data["mes_constants"]["metrics"][0]["alpha"] == 0.5
    assert len(data["trajectory"]) == data["steps"] + 1
    final = Arch.load(out / "final.yaml")
    SearchSpace.from_dict(SMALL).validate(final)
    assert final.digest() == data["final"]["digest"]
    assert len(list((out / "pareto").glob("*.yaml"))) == len(data["pareto"])
    assert "PROXY" in (out / "report.md").read_text()


def test_search_cli_with_user_callable(run_cli_json, tables, tmp_path, monkeypatch):
    (tmp_path / "lb_cli_eval.py").write_text(
        "def top1(arch):\n    return 60.0 + 2.0 * sum(arch.depths) + sum(s.width for s in arch.stages) / 100\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = run_cli_json("search", "--lut", tables["full"], "--accuracy", "lb_cli_eval:top1", "--target-params", "4M",
                        "--out", "out")
    assert data["reached"] and data["final"]["params"] <= 4e6
    assert data["oracle"]["is_proxy"] is False and data["oracle"]["kind"] == "callable"
    assert (tmp_path / "out" / "trajectory.csv").is_file()


def test_search_bad_inputs(run_cli, tables, tmp_path, capsys):
    base = ["search", "--lut", tables["full"], "--out", str(tmp_path / "x")]
    assert "unknown accuracy oracle" in one_line_error(run_cli, *base, "--accuracy", "magic", "--target-latency", "4")
    assert "pkg.module:function" in one_line_error(run_cli, *base, "--accuracy", "a:b:c", "--target-latency", "4")
    assert "unreachable" in one_line_error(run_cli, *base, "--accuracy", "proxy", "--target-latency", "0.01")
    assert "unreachable" in one_line_error(run_cli, *base, "--accuracy", "proxy", "--target-params", "1k")
    bad_acc = tmp_path / "acc.yaml"
    bad_acc.write_text("- {name: x}\n")
    assert "needs a 'top1'" in one_line_error(run_cli, *base, "--accuracy", str(bad_acc), "--target-latency", "4")
    for extra, match in ((["--target-latency", "4", "--target-mes", "50"], "not allowed with"),
                         ([], "one of the arguments")):
        code, _, err = run_cli(*base, "--accuracy", "proxy", *extra)  # argparse's own errors, one line too
        assert code == 2 and match in err and err.count("\n") == 1
    assert "milliseconds" in one_line_error(run_cli, *base, "--accuracy", "proxy", "--target-latency", "fast")
    cfg = tmp_path / "mes.yaml"
    cfg.write_text("metrics: {memory: {value: 'column:peak_mb', unit: 20, alpha: 0.5}}\n")
    assert "cannot score MES metric column:peak_mb" in one_line_error(
        run_cli, *base, "--accuracy", "proxy", "--target-latency", "4", "--mes-config", str(cfg))
    assert not (tmp_path / "x").exists()


def test_model_build_writes_a_usable_arch_file(tables, tmp_path, capsys, run_cli_json):
    from latbench.commands.model_build import register_build

    parser = argparse.ArgumentParser()
    register_build(parser.add_subparsers())
    out = tmp_path / "built.yaml"
    args = parser.parse_args(["build", "--lut", tables["full"], "--target-mes", "60", "--accuracy", "proxy",
                              "--out", str(out), "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    arch = Arch.load(out)
    assert arch.name == "built" and data["arch"] == arch.to_dict()
    report = data["latency_report"]
    assert report["mes"] >= 60 and report["params"] == arch_params(arch)
    assert sum(b["est_ms"] for b in report["blocks"]) == pytest.approx(report["latency_ms"])
    assert set(report["per_stage_ms"]) == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}
    info = run_cli_json("model", "info", str(out))
    assert info["params"] == report["params"]
    # The human output prints the per-block report and the constants.
    args = parser.parse_args(["build", "--lut", tables["full"], "--target-latency", "4", "--accuracy", "proxy",
                              "--out", str(tmp_path / "b2.json")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "per stage" in text and "alpha=0.5" in text and "PROXY" in text
    assert Arch.load(tmp_path / "b2.json").name == "b2"


@pytest.mark.slow
def test_model_build_next_steps_are_commands_that_work(tables, tmp_path, run_cli, run_cli_json, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = run_cli_json("model", "build", "--lut", tables["full"], "--target-mes", "60", "--accuracy", "proxy",
                        "--out", "built.yaml")
    assert len(data["next"]) == 3
    for step in data["next"]:  # run each as printed
        argv = step.split()
        assert argv[0] == "latbench"
        code, _, err = run_cli(*argv[1:])
        assert code == 0, f"{step}: {err}"
    assert list((tmp_path / "built-export").rglob("*.onnx"))


def test_no_traceback_in_a_real_process(tables, tmp_path):
    proc = latbench_subprocess("search", "--lut", tables["full"], "--accuracy", "nope:", "--target-latency", "4",
                               "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "pkg.module:function" in proc.stderr


def test_mes_report_device_flags_are_checked(run_cli, tables, tmp_path):
    msg = one_line_error(run_cli, "mes", "report", "--lut", tables["full"], "efficientformerv2_s0", "--measure", "cpu",
                         "--compute-units", "ALL", "--out", str(tmp_path / "o"))
    assert "--compute-units does not apply to cpu devices" in msg
    assert "--rounds" in one_line_error(run_cli, "mes", "report", "--lut", tables["full"], "efficientformerv2_s0",
                                        "--measure", "cpu", "--rounds", "0", "--out", str(tmp_path / "o"))


def test_mes_report_json_without_out_writes_no_files(run_cli_json, tables, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = run_cli_json("mes", "report", "--lut", tables["full"], "efficientformerv2_s0")
    assert [r["name"] for r in rows] == ["efficientformerv2_s0"]
    assert list(tmp_path.iterdir()) == []  # no ./mes-report
