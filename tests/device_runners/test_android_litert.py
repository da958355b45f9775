"""Android with `runtime="litert"`: benchmark_model on a fake phone (the real adb server, a fake adbd) that
really runs the pushed .tflite with ai-edge-litert and prints benchmark_model's real output formats."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import fake_benchmark_model
import pandas as pd
import pytest
import yaml
from fake_adbd import Misbehaviour
from fake_benchmark_model import MAGIC, BenchmarkModelBehaviour

from device_runners import DeviceLost, open_runner
from device_runners.android import AndroidRunner
from device_runners.benchmark_model_output import parse_benchmark_model_output
from latbench.core.errors import DeviceError, UsageError
from latbench.measuring.measurement import SamplingPolicy, relative_ci

QUICK = {"backoff_s": 0.05, "runtime": "litert"}


def open_phone(adb_server, adbd, **kw) -> AndroidRunner:
    return open_runner(f"android:{adbd.serial}", adb_port=adb_server.port, **{**QUICK, **kw})


def litert_phone(make_phone, misbehaviour: Misbehaviour | None = None):
    return make_phone(misbehaviour, install_perf_test=False, install_benchmark_model=True)


def bm_commands(adbd) -> list[list[str]]:
    return [c for c in adbd.device.commands if c[0].endswith("benchmark_model")]


@pytest.mark.parametrize("variant", ["classic", "info", "newer"])
def test_samples_are_the_exact_single_runs_of_two_run_invocations(adb_server, make_phone, tflite_models, variant):
    adbd = litert_phone(make_phone, Misbehaviour(bench=BenchmarkModelBehaviour(variant=variant)))
    with open_phone(adb_server, adbd, threads=2) as runner:
        prepared = runner.prepare(tflite_models["attndown"])
        m = runner.measure(prepared, SamplingPolicy.fixed(6, 2))
    assert runner.artifact_format == "tflite" and prepared.handle.endswith(".tflite")
    assert m.n == 6 and all(s > 0 for s in m.samples_ms)
    s = m.provenance["sampling"]
    assert s["invocations"] == 3 and s["runs_per_invocation"] == 2 and s["sample_source"] == "benchmark_model_single_runs"
    invocations = m.extra["invocations"]
    for i, inv in enumerate(invocations):  # each invocation's two runs are its min and max
        pair = sorted(m.samples_ms[2 * i: 2 * i + 2])
        assert inv["count"] == 2 and pair == pytest.approx([inv["min_ms"], inv["max_ms"]] if not inv["all_same"]
                                                           else [inv["curr_ms"]] * 2)
    assert m.session_ms > 0 and m.first_inference_ms > 0
    # Every invocation: under taskset on the big cores, threads, XNNPACK and the run counts explicit.
    cmds = bm_commands(adbd)
    assert len(cmds) == 3 and adbd.device.taskset_masks == ["c0"] * 3
    assert {"--num_threads=2", "--use_xnnpack=true", "--num_runs=2", "--min_secs=0", "--warmup_runs=2",
            f"--graph={prepared.handle}"} <= set(cmds[0])
    p = m.provenance
    assert p["runtime"] == "litert benchmark_model" and p["execution_provider"] == "XNNPACK" and p["threads"] == 2
    assert p["benchmark_model_size"] == (adbd.device.root / "benchmark_model").stat().st_size
    assert p["core_mask"] == "c0" and p["input_shape"] == [1, 120, 14, 14] and p["device_model"] == "Pixel 7"
    assert adbd.device.pushes == [prepared.handle]  # the model once; the binary was already there


def test_adaptive_sampling_stops_on_the_policy_rule(adb_server, make_phone, tflite_models):
    adbd = litert_phone(make_phone)
    policy = SamplingPolicy(warmup_runs=1, warmup_time_s=0.0, min_runs=6, target_ci=0.5, time_cap_s=30.0)
    with open_phone(adb_server, adbd) as runner:
        m = runner.measure(runner.prepare(tflite_models["ffn"]), policy)
    s = m.provenance["sampling"]
    assert s["stopped_by"] == "ci" and m.n >= 6 and m.n == 2 * s["invocations"]
    # A CI target no sample set can reach (0): only the time cap can stop it, and the measurement
    # must say it stopped short. (A 1 % target was reachable within the cap on a quiet host.)
    capped = SamplingPolicy(warmup_runs=1, warmup_time_s=0.0, min_runs=10**6, max_runs=10**7, time_cap_s=0.3,
                            target_ci=0.0)
    with open_phone(adb_server, adbd) as runner:
        m = runner.measure(runner.prepare(tflite_models["ffn"]), capped)
    assert m.provenance["sampling"]["stopped_by"] == "time_cap"
    assert relative_ci(m.samples_ms) == 0 or any("target" in w for w in m.warnings)


def test_op_profile_is_pulled_from_the_csv_file(adb_server, make_phone, tflite_models):
    adbd = litert_phone(make_phone)
    with open_phone(adb_server, adbd, xnnpack="off", profile_runs=3) as runner:
        m = runner.measure(runner.prepare(tflite_models["attndown"]), SamplingPolicy.fixed(2, 1), profile=True)
    assert m.provenance["execution_provider"] == "builtin"
    profiling = [c for c in bm_commands(adbd) if "--enable_op_profiling=true" in c]
    assert len(profiling) == 1 and "--op_profiling_output_mode=csv" in profiling[0] and "--use_xnnpack=false" in profiling[0]
    kinds = {o.op_type for o in m.per_op}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX"} <= kinds and all(o.median_ms > 0 for o in m.per_op)
    assert not list(adbd.device.root.rglob("ops_*.csv"))  # the pulled file is removed
    with open_phone(adb_server, adbd, profile_runs=3) as runner:  # XNNPACK: one delegate row
        m = runner.measure(runner.prepare(tflite_models["attndown"]), SamplingPolicy.fixed(2, 1), profile=True)
    assert [o.op_type for o in m.per_op] == ["TfLiteXNNPackDelegate"]


def test_missing_binary_is_explained_or_pushed_once(adb_server, make_phone, tmp_path):
    adbd = make_phone(install_perf_test=False)
    with pytest.raises(DeviceError, match="benchmark_model not found at /data/local/tmp/benchmark_model .*"
                                          "benchmark_model_local") as e:
        open_phone(adb_server, adbd)
    assert "\n" not in str(e.value)
    local = tmp_path / "benchmark_model"
    local.write_bytes(MAGIC)
    with open_phone(adb_server, adbd, benchmark_model_local=local) as runner:
        assert runner.describe()["benchmark_model_size"] == len(MAGIC)
    with open_phone(adb_server, adbd, benchmark_model_local=local):
        pass
    assert adbd.device.pushes.count("/data/local/tmp/benchmark_model") == 1
    with pytest.raises(UsageError, match="benchmark_model_local: no such file"):
        open_phone(adb_server, make_phone(install_perf_test=False), benchmark_model_local=tmp_path / "nope")


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (BenchmarkModelBehaviour(exit_code=139), "benchmark_model exited with status 139"),
        (BenchmarkModelBehaviour(garbage=True), "unrecognised benchmark_model output.*no inference average"),
        (BenchmarkModelBehaviour(truncated=True), "unrecognised benchmark_model output"),
    ],
)
def test_benchmark_model_failures_are_one_line_device_errors(adb_server, make_phone, tflite_models, behaviour,
                                                             message):
    adbd = litert_phone(make_phone, Misbehaviour(bench=behaviour))
    with open_phone(adb_server, adbd) as runner:
        prepared = runner.prepare(tflite_models["ffn"])
        with pytest.raises(DeviceError, match=message) as err:
            runner.measure(prepared, SamplingPolicy.fixed(2, 1))
    assert "\n" not in str(err.value) and not isinstance(err.value, DeviceLost)


def test_a_model_the_tool_cannot_load_reports_its_reason(adb_server, make_phone, tmp_path):
    adbd = litert_phone(make_phone)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x18\x00\x00\x00TFL3" + b"\x00" * 64)  # the identifier, no valid model
    with open_phone(adb_server, adbd) as runner:
        with pytest.raises(UsageError, match="broken.tflite is not a readable TFLite model"):
            runner.prepare(broken)


def test_hung_benchmark_model_times_out(adb_server, make_phone, tflite_models):
    adbd = litert_phone(make_phone, Misbehaviour(bench=BenchmarkModelBehaviour(hang_s=60)))
    with open_phone(adb_server, adbd, command_timeout=1.0) as runner:
        prepared = runner.prepare(tflite_models["ffn"])
        with pytest.raises(DeviceError, match="timed out after 1s"):  # the message proves the timeout fired
            runner.measure(prepared, SamplingPolicy.fixed(2, 1))


def test_option_errors(adb_server, make_phone, models):
    adbd = litert_phone(make_phone)
    with pytest.raises(UsageError, match="runtime must be one of onnxruntime, litert"):
        open_phone(adb_server, adbd, runtime="tensorrt")
    with pytest.raises(UsageError, match="apply to android devices with --runtime litert"):
        open_phone(adb_server, make_phone(), runtime="onnxruntime", xnnpack="off")
    with open_phone(adb_server, adbd) as runner:
        with pytest.raises(UsageError, match="android runner measures tflite artifacts"):
            runner.prepare(models["small"])


def test_profile_command_with_runtime_litert(adb_server, make_phone, tflite_models, run_cli):
    adbd = litert_phone(make_phone)
    code, out, err = run_cli("profile", str(tflite_models["ffn"]), "--device", f"android:{adbd.serial}",
                             "--adb-port", str(adb_server.port), "--runtime", "litert", "--xnnpack", "on",
                             "--runs", "4", "--rounds", "1", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 4 and res["provenance"]["runtime"] == "litert benchmark_model"
    assert res["per_op_type"] and res["per_op_type"][0]["op_type"] == "TfLiteXNNPackDelegate"
    code, _, err = run_cli("profile", str(tflite_models["ffn"]), "--device", f"android:{adbd.serial}",
                           "--adb-port", str(adb_server.port), "--runs", "4", "--rounds", "1")
    assert code != 0 and err.count("\n") == 1 and "onnx" in err


def test_no_warm_up_runs(adb_server, make_phone, tflite_models):
    adbd = litert_phone(make_phone)
    with open_phone(adb_server, adbd) as runner:
        m = runner.measure(runner.prepare(tflite_models["ffn"]), SamplingPolicy.fixed(2, 0))
    assert m.n == 2 and "--warmup_runs=0" in bm_commands(adbd)[0] and m.first_inference_ms > 0


@pytest.mark.parametrize(("variant", "fmt"), [("classic", "classic"), ("info", "info-prefixed"),
                                               ("newer", "info-prefixed")])
def test_the_fake_prints_what_the_real_tool_prints(tflite_models, variant, fmt):
    """The fake's output reads like the fixtures of the real tool (same format detection, fields)."""
    argv = ["benchmark_model", f"--graph={tflite_models['ffn']}", "--num_threads=1", "--num_runs=3", "--min_secs=0",
            "--warmup_runs=2", "--warmup_min_secs=0"]
    rc, out, _ = fake_benchmark_model.run(argv, resolve=Path, behaviour=BenchmarkModelBehaviour(variant=variant),
                                          stop=threading.Event())
    rep = parse_benchmark_model_output(out)
    assert rc == 0 and rep.format == fmt and rep.count == 3 and rep.warmup_count == 2
    assert rep.init_ms > 0 and (rep.all_same or rep.min_ms <= rep.avg_ms <= rep.max_ms)
    assert (rep.median_ms is not None) == (variant == "newer")
    rc, out, _ = fake_benchmark_model.run([*argv, "--use_nnapi=true"], resolve=Path,
                                          behaviour=BenchmarkModelBehaviour(), stop=threading.Event())
    assert rc == 1 and "Unconsumed cmdline flags: --use_nnapi=true" in out


ONE_SPACE = {  # a one-architecture space without attention: the same blocks as tests/tables/test_lut_litert.py
    "name": "one",
    "resolutions": [224],
    "stages": [{"widths": [w], "depth": [1, 1], "expansions": [4], "attention": False} for w in (32, 48, 96, 176)],
}


@pytest.mark.slow
def test_lut_build_on_android_with_litert_end_to_end(adb_server, make_phone, run_cli_json, tmp_path):
    """`lut build` through the real adb server: every entry converted to .tflite, pushed once, timed by
    benchmark_model; a second build measures nothing."""
    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("litert_torch not importable (pip install 'latbench[litert]')")
    adbd = litert_phone(make_phone)
    space = tmp_path / "one.yaml"
    space.write_text(yaml.safe_dump(ONE_SPACE))
    out = tmp_path / "table"
    args = ["lut", "build", "--device", f"android:{adbd.serial}", "--adb-port", str(adb_server.port),
            "--runtime", "litert", "--space", str(space), "--out", str(out), "--runs", "4", "--rounds", "1",
            "--jobs", "2", "--no-reference", "--calibrate", "0"]
    [summary] = run_cli_json(*args)
    blocks = pd.read_csv(out / "blocks.csv")
    assert {"stem", "ffn", "embed", "head", "empty"} <= set(blocks["kind"])
    # Every entry measured (more rounds where the device read slow around one: slow periods).
    assert summary["measured_now"] == blocks["rounds"].sum() >= len(blocks) and (blocks["latency_ms"] > 0).all()
    assert (blocks["n"] == 4 * blocks["rounds"]).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["device"]["runtime"] == "litert benchmark_model" and meta["device"]["execution_provider"] == "XNNPACK"
    graphs = {next(a for a in c if a.startswith("--graph=")) for c in bm_commands(adbd)}
    # every entry and every anchor (the attention anchor is not in this space: it is the time base)
    assert len(graphs) == len(set(blocks["key"]) | set(meta["anchors"]["keys"])) > len(blocks)
    assert all(g.endswith(".tflite") for g in graphs)
    assert sorted(adbd.device.pushes) == sorted(g.removeprefix("--graph=") for g in graphs)  # each model pushed once
    calls = len(bm_commands(adbd))
    [again] = run_cli_json(*args)
    assert again["measured_now"] == 0 and len(bm_commands(adbd)) == calls


@pytest.mark.parametrize("xnnpack", ["on", "off"])
def test_int8_tflite_is_measured_and_its_precision_recorded(adb_server, make_phone, int8_models, xnnpack):
    if "tflite" not in int8_models:
        pytest.skip("int8 LiteRT needs litert-torch, ai-edge-litert and ai-edge-quantizer")
    adbd = litert_phone(make_phone)
    with open_phone(adb_server, adbd, xnnpack=xnnpack) as runner:
        m = runner.measure(runner.prepare(int8_models["tflite"]), SamplingPolicy.fixed(4, 1))
    assert m.n == 4 and all(s > 0 for s in m.samples_ms)  # the fake ran the int8 graph in LiteRT
    assert m.provenance["precision"] == "int8" and m.provenance["input_dtype"] == "float32"
    assert f"--use_xnnpack={'true' if xnnpack == 'on' else 'false'}" in bm_commands(adbd)[0]
