"""The emulated LiteRT CPU backend: real conversions timed in the real ai-edge-litert interpreter."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from device_runners import discover_devices, open_runner
from device_runners import litert as litert_mod
from device_runners.litert import NO_PER_OP, LiteRTRunner
from latbench.core.errors import DeviceError, UsageError
from latbench.measuring.measurement import SamplingPolicy

FAST = SamplingPolicy(min_runs=30, time_cap_s=1.0, warmup_time_s=0.02)


@pytest.fixture
def runner(tflite_models):
    with LiteRTRunner() as r:
        yield r


def test_fixed_runs_give_exact_samples_and_full_provenance(runner, tflite_models):
    prepared = runner.prepare(tflite_models["attndown"])
    m = runner.measure(prepared, SamplingPolicy.fixed(40, 3))
    assert m.n == 40 and all(s > 0 for s in m.samples_ms)
    assert m.p5 <= m.median <= m.p95
    p = m.provenance
    assert p["device_kind"] == "litert" and p["runtime"] == "ai-edge-litert" and p["runtime_version"]
    assert p["execution_provider"] == "XNNPACK" and p["xnnpack"] is True and p["threads"] == 1
    assert p["clock"] == "thread_cpu" and p["sampling"]["timed_runs"] == 40 and p["sampling"]["warmup_runs"] >= 3
    assert p["input_shape"] == [1, 120, 14, 14] and p["precision"] == "fp32"
    assert p["delegation"]["fully_delegated"] and p["delegation"]["partitions"] == 1
    assert p["content_hash"] and p["latbench_version"] and p["soc"]
    assert m.session_ms > 0 and m.first_inference_ms > 0
    assert not any("XNNPACK took no node" in w for w in m.warnings)


def test_adaptive_sampling_follows_the_policy_stop_rule(runner, tflite_models):
    m = runner.measure(runner.prepare(tflite_models["ffn"]), FAST.replace(warmup_runs=2))
    info = m.provenance["sampling"]
    assert info["stopped_by"] in ("ci", "time_cap", "max_runs")
    if info["stopped_by"] == "ci":
        assert m.n >= FAST.min_runs and m.ci_rel <= FAST.target_ci
    capped = runner.measure(runner.prepare(tflite_models["ffn"]),
                            SamplingPolicy(min_runs=10**6, max_runs=10**7, time_cap_s=0.2, warmup_time_s=0.0))
    assert capped.provenance["sampling"]["stopped_by"] == "time_cap"


def test_builtin_kernels_without_xnnpack_are_much_slower(tflite_models):
    """XNNPACK off = benchmark_model's --use_xnnpack=false: the reference kernels (about 8x slower on
    the attention downsampling, measured); the ratio is what tells the two backends apart."""
    path = tflite_models["attndown"]
    with LiteRTRunner(xnnpack="off") as off, LiteRTRunner(xnnpack=True) as on:
        slow = off.measure(off.prepare(path), SamplingPolicy.fixed(15, 2))
        fast = on.measure(on.prepare(path), SamplingPolicy.fixed(15, 2))
    assert slow.provenance["execution_provider"] == "builtin" and slow.provenance["delegation"] is None
    assert statistics.median(slow.samples_ms) > 2 * statistics.median(fast.samples_ms)


def test_threads_clock_and_pinning(tflite_models, own_core):
    with LiteRTRunner(threads=2) as r:
        m = r.measure(r.prepare(tflite_models["ffn"]), SamplingPolicy.fixed(5, 1))
        assert m.provenance["threads"] == 2 and m.provenance["clock"] == "wall"
    with pytest.raises(UsageError, match="needs threads=1"):
        LiteRTRunner(threads=2, clock="thread_cpu")
    with pytest.raises(UsageError, match="--threads 2 on 1 pinned core"):
        LiteRTRunner(threads=2, core_mask=own_core[1])
    with pytest.raises(UsageError, match="threads must be >= 1"):
        LiteRTRunner(threads=0)
    with pytest.raises(UsageError, match="xnnpack must be on or off"):
        LiteRTRunner(xnnpack="maybe")
    core, mask = own_core
    with LiteRTRunner(core_mask=mask) as r:
        m = r.measure(r.prepare(tflite_models["ffn"]), SamplingPolicy.fixed(5, 1))
        assert m.provenance["core_mask"] == mask and m.provenance["cores"] == [core]


def test_renew_gives_a_fresh_interpreter_with_the_same_facts(runner, tflite_models):
    first = runner.prepare(tflite_models["ffn"])
    again = runner.renew(first)
    assert again.handle is not first.handle and again.info == first.info
    assert runner.measure(again, SamplingPolicy.fixed(5, 1)).n == 5


def test_bad_artifacts_are_one_line_usage_errors(runner, tmp_path, models):
    with pytest.raises(UsageError, match="litert runner measures tflite artifacts"):
        runner.prepare(models["small"])  # an .onnx file
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a model")
    with pytest.raises(UsageError, match="broken.tflite is not a readable TFLite model") as e:
        runner.prepare(broken)
    assert "\n" not in str(e.value)


def test_per_op_needs_benchmark_model_else_a_warning_says_how(runner, tflite_models):
    m = runner.measure(runner.prepare(tflite_models["ffn"]), SamplingPolicy.fixed(5, 1), profile=True)
    assert m.per_op == [] and NO_PER_OP in m.warnings
    assert "linux_x86-64_benchmark_model" in NO_PER_OP and "--benchmark-model" in NO_PER_OP


def test_per_op_rows_from_a_host_benchmark_model(tflite_models, benchmark_model_bin, monkeypatch):
    monkeypatch.setenv(litert_mod.BENCHMARK_MODEL_ENV, str(benchmark_model_bin))
    with LiteRTRunner() as r:  # found through $LATBENCH_BENCHMARK_MODEL
        m = r.measure(r.prepare(tflite_models["attndown"]), SamplingPolicy.fixed(5, 1), profile=True)
        assert m.provenance["benchmark_model"] == str(benchmark_model_bin)
        assert m.provenance["benchmark_model_size"] == benchmark_model_bin.stat().st_size
    # One XNNPACK partition: the whole graph is one delegate row holding the profiled average.
    assert [(o.op_type, o.median_ms > 0) for o in m.per_op] == [("TfLiteXNNPackDelegate", True)]
    with LiteRTRunner(xnnpack="off", benchmark_model_path=benchmark_model_bin) as r:
        m = r.measure(r.prepare(tflite_models["attndown"]), SamplingPolicy.fixed(3, 1), profile=True)
    kinds = {o.op_type for o in m.per_op}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX"} <= kinds and "TfLiteXNNPackDelegate" not in kinds


@pytest.mark.parametrize(("behaviour", "message"), [
    ({"exit_code": 139}, "benchmark_model exited with status 139"),
    ({"garbage": True}, "could not read benchmark_model's op profile"),
    ({"truncated": True}, "could not read benchmark_model's op profile"),
])
def test_benchmark_model_failures_are_device_errors(tflite_models, benchmark_model_bin, monkeypatch, behaviour,
                                                    message):
    monkeypatch.setenv("FAKE_BENCHMARK_MODEL_BEHAVIOUR", json.dumps(behaviour))
    with LiteRTRunner(benchmark_model_path=benchmark_model_bin) as r:
        prepared = r.prepare(tflite_models["ffn"])
        with pytest.raises(DeviceError, match=message) as e:
            r.measure(prepared, SamplingPolicy.fixed(3, 1), profile=True)
    assert "\n" not in str(e.value)


def test_benchmark_model_hang_is_cut_by_the_timeout(tflite_models, benchmark_model_bin, monkeypatch):
    monkeypatch.setenv("FAKE_BENCHMARK_MODEL_BEHAVIOUR", json.dumps({"hang_s": 30}))
    with LiteRTRunner(benchmark_model_path=benchmark_model_bin, profile_timeout=1.0) as r:
        with pytest.raises(DeviceError, match="did not finish within 1s"):
            r.measure(r.prepare(tflite_models["ffn"]), SamplingPolicy.fixed(3, 1), profile=True)


def test_bad_benchmark_model_paths(tmp_path):
    with pytest.raises(UsageError, match="benchmark_model not found"):
        LiteRTRunner(benchmark_model_path=tmp_path / "nope")
    plain = tmp_path / "benchmark_model"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="not executable"):
        LiteRTRunner(benchmark_model_path=plain)


def test_registered_and_discovered(tflite_models):
    [info] = [d for d in discover_devices() if d.id == "litert"]
    assert info.available and info.provenance["runtime"] == "ai-edge-litert"
    with open_runner("litert", threads=1) as r:
        assert isinstance(r, LiteRTRunner) and r.artifact_format == "tflite"
    with pytest.raises(UsageError, match="'compute_units' does not apply to litert"):
        open_runner("litert", compute_units="ALL")


def test_without_the_extra_the_device_says_how_to_install(monkeypatch, run_cli, tmp_path):
    monkeypatch.setattr(litert_mod, "litert_version", lambda: None)
    [info] = [d for d in discover_devices() if d.id == "litert"]
    assert not info.available and "pip install 'latbench[litert]'" in info.reason
    with pytest.raises(DeviceError, match=r"needs ai-edge-litert, which is not installed: pip install"):
        LiteRTRunner()
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    code, out, err = run_cli("profile", str(model), "--device", "litert")
    assert code == 1 and err.count("\n") == 1 and "pip install 'latbench[litert]'" in err


def test_profile_command_on_litert(run_cli, tflite_models):
    code, out, err = run_cli("profile", str(tflite_models["ffn"]), "--device", "litert", "--runs", "10",
                             "--rounds", "1", "--xnnpack", "on", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["device"] == "litert" and res["n"] == 10 and res["provenance"]["runtime"] == "ai-edge-litert"
    assert any("no per-op times" in w for w in res["warnings"])
    code, _, err = run_cli("profile", str(tflite_models["ffn"]), "--device", "cpu")
    assert code == 2 and "runs onnx artifacts" in err and err.count("\n") == 1
    code, _, err = run_cli("profile", str(tflite_models["ffn"]), "--device", "cpu", "--xnnpack", "off")
    assert code == 2 and "--xnnpack does not apply to cpu devices" in err


def test_empty_graph_is_timed_without_a_warning(tmp_path):
    """The `empty` block converts to a graph without ops; XNNPACK has nothing to take and that is fine."""
    pytest.importorskip("litert_torch")
    from latbench.blocks.configs import EmptyConfig
    from latbench.export import export_one

    rec = export_one(EmptyConfig(224, 32, 56, 56), "tflite", None)
    assert rec.ok, rec.error
    with LiteRTRunner() as r:
        m = r.measure(r.prepare(Path(rec.path)), SamplingPolicy.fixed(5, 1))
    assert m.n == 5 and not any("XNNPACK" in w for w in m.warnings)
