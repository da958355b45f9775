"""The emulated CPU backend: real onnxruntime sessions on this host."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest

from device_runners.base import parse_core_mask
from device_runners.cpu import CpuRunner
from device_runners.ort_common import parse_ort_profile
from latbench.core.errors import UsageError
from latbench.core.hashing import tree_sha256
from latbench.measuring.measurement import Measurement, SamplingPolicy

FAST = SamplingPolicy(min_runs=30, time_cap_s=1.0, warmup_time_s=0.02)


@pytest.fixture
def runner():
    with CpuRunner() as r:
        yield r


def test_fixed_run_count_gives_exactly_that_many_samples(runner, models):
    prepared = runner.prepare(models["small"])
    m = runner.measure(prepared, SamplingPolicy.fixed(40, 3))
    assert m.n == 40 and all(s > 0 for s in m.samples_ms)
    assert m.provenance["sampling"]["timed_runs"] == 40
    assert m.provenance["sampling"]["warmup_runs"] >= 3
    assert m.p5 <= m.median <= m.p95


def test_adaptive_runs_stop_on_ci_or_time_cap(runner, models):
    m = runner.measure(runner.prepare(models["small"]), FAST.replace(warmup_runs=2))
    info = m.provenance["sampling"]
    assert info["stopped_by"] in ("ci", "time_cap", "max_runs")
    assert m.n >= (FAST.min_runs if info["stopped_by"] == "ci" else 1)
    if info["stopped_by"] == "ci":
        assert m.ci_rel <= FAST.target_ci
    else:
        assert any("target" in w for w in m.warnings) or m.ci_rel <= FAST.target_ci


def test_time_cap_is_respected_and_reported(models):
    # min_runs out of reach: only the time cap can stop it.
    policy = SamplingPolicy(min_runs=10**6, max_runs=10**7, time_cap_s=0.2, warmup_time_s=0.0)
    with CpuRunner() as r:
        prepared = r.prepare(models["small"])
        m = r.measure(prepared, policy.replace(warmup_runs=1))
    assert m.provenance["sampling"]["stopped_by"] == "time_cap"
    assert m.n < 10**6  # stopped by the cap, long before the run bounds


def test_session_and_first_inference_recorded_apart(runner, models):
    prepared = runner.prepare(models["small"])
    m = runner.measure(prepared, SamplingPolicy.fixed(10, 1))
    assert m.session_ms is not None and m.session_ms > 0
    assert m.first_inference_ms is not None and m.first_inference_ms > 0
    assert m.session_ms not in m.samples_ms


def test_prepare_is_cached_by_content_hash(runner, models, tmp_path):
    a = runner.prepare(models["small"])
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(models["small"].read_bytes())
    b = runner.prepare(copy)  # same bytes, other path: same prepared session, own label
    assert b.handle is a.handle and b.label == "copy" and a.label == "small"
    assert runner.prepare(models["small"]) is a
    assert a.content_hash == tree_sha256(models["small"])
    assert runner.prepare(models["medium"]) is not a


def test_renew_gives_a_fresh_session_for_the_same_artifact(runner, models):
    a = runner.prepare(models["small"])
    b = runner.renew(a)
    assert b.handle[0] is not a.handle[0] and b.content_hash == a.content_hash and b.label == a.label
    assert runner.prepare(models["small"]) is b  # the renewed session is the one kept
    assert runner.measure(b, SamplingPolicy.fixed(5, 1)).n == 5


def test_provenance_records_settings_and_inputs(runner, models):
    m = runner.measure(runner.prepare(models["small"], label="tiny"), SamplingPolicy.fixed(5, 1))
    p = m.provenance
    assert m.label == "tiny"
    assert p["runtime"] == "onnxruntime" and p["runtime_version"]
    assert p["threads"] == 1 and p["inter_op_threads"] == 1 and p["execution_mode"] == "sequential"
    assert p["input_shape"] == [1, 3, 32, 32] and p["input_dtype"] == "float32" and p["precision"] == "fp32"
    assert p["latbench_version"]
    json.dumps(m.to_dict(), allow_nan=False)  # everything recorded is JSON-safe
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))).samples_ms == m.samples_ms


def test_float16_model_gets_float16_input(runner, models):
    m = runner.measure(runner.prepare(models["fp16"]), SamplingPolicy.fixed(5, 1))
    assert m.provenance["input_dtype"] == "float16" and m.provenance["precision"] == "fp16"


def test_profile_uses_a_separate_session_and_parses_nodes(runner, models):
    prepared = runner.prepare(models["medium"])
    m = runner.measure(prepared, SamplingPolicy.fixed(20, 2), profile=True)
    assert m.n == 20  # profiling adds no samples
    op_types = {op.op_type for op in m.per_op}
    assert "Conv" in op_types and "GlobalAveragePool" in op_types
    assert all(op.median_ms >= 0 for op in m.per_op)
    assert sum(m.per_op_type().values()) == pytest.approx(sum(op.median_ms for op in m.per_op))
    # The timing session itself never had profiling on.
    session, _ = prepared.handle
    assert session.get_session_options().enable_profiling is False


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_core_pinning_applies_during_measurement_and_is_restored(models):
    before = os.sched_getaffinity(0)
    core = min(before)
    seen = []
    with CpuRunner(core_mask=1 << core) as r:
        prepared = r.prepare(models["small"])
        session, feeds = prepared.handle
        real_run = session.run

        class Spy:
            def run(self, *a, **k):
                seen.append(os.sched_getaffinity(0))
                return real_run(*a, **k)

        r.measure(dataclasses.replace(prepared, handle=(Spy(), feeds)), SamplingPolicy.fixed(3, 1))
        assert r.describe()["core_mask"] == format(1 << core, "x")
    assert seen and all(s == {core} for s in seen)
    assert os.sched_getaffinity(0) == before


def test_core_mask_parsing_and_validation():
    assert parse_core_mask("f0") == [4, 5, 6, 7]
    assert parse_core_mask("0x3") == [0, 1]
    assert parse_core_mask([2, 0, 2]) == [0, 2]
    assert parse_core_mask(None) is None
    with pytest.raises(UsageError):
        parse_core_mask("zz")
    with pytest.raises(UsageError):
        parse_core_mask(0)
    with pytest.raises(UsageError, match="not available"):
        CpuRunner(core_mask=1 << 60)


def test_wrong_artifact_and_missing_file_are_usage_errors(runner, tmp_path):
    with pytest.raises(UsageError, match="onnx"):
        runner.prepare(tmp_path / "model.mlpackage")
    with pytest.raises(UsageError, match="not found"):
        runner.prepare(tmp_path / "missing.onnx")


def test_profile_parser_on_real_profile_skips_warmup_runs(runner, models):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(models["small"].parent / "p")
    s = ort.InferenceSession(str(models["small"]), so, providers=["CPUExecutionProvider"])
    feeds = runner.prepare(models["small"]).handle[1]
    for _ in range(4):
        s.run(None, feeds)
    path = s.end_profiling()
    events = json.load(open(path))
    all_ops = parse_ort_profile(events)
    later = parse_ort_profile(events, skip_runs=3)
    assert {o.node_name for o in all_ops} == {o.node_name for o in later}
    node_events = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert len(node_events) == 4 * len(all_ops)


def test_profile_parser_rejects_non_profiles():
    with pytest.raises(ValueError):
        parse_ort_profile("not json")
    with pytest.raises(ValueError):
        parse_ort_profile('{"a": 1}')
    synthetic = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 10},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 1, "dur": 900, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "ts": 20, "dur": 10},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 21, "dur": 100, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv_fence_before", "ts": 21, "dur": 5, "args": {"op_name": "Conv"}},
    ]
    assert parse_ort_profile(synthetic)[0].median_ms == pytest.approx(0.5)
    assert parse_ort_profile(synthetic, skip_runs=1)[0].median_ms == pytest.approx(0.1)
    assert parse_ort_profile({"traceEvents": synthetic})[0].op_type == "Conv"


def test_contention_share_is_recorded_and_warned_about():
    from device_runners.base import sample_latencies

    twenty = SamplingPolicy.fixed(20, 1)
    busy = lambda: sum(range(2000))  # noqa: E731
    _, info, warnings = sample_latencies(busy, twenty, cpu_clock=time.thread_time_ns)
    assert 0.0 < info["cpu_share"] <= 1.0
    # A thread that got no CPU at all while the wall clock ran: everything was waiting.
    _, info, warnings = sample_latencies(busy, twenty, cpu_clock=lambda: 0)
    assert info["cpu_share"] == 0.0 and any("host contention" in w for w in warnings)
    _, info, _ = sample_latencies(busy, SamplingPolicy.fixed(5, 1))
    assert "cpu_share" not in info


def test_thread_cpu_clock_option(models):
    with CpuRunner(clock="thread_cpu") as r:
        m = r.measure(r.prepare(models["small"]), SamplingPolicy.fixed(15, 1))
    assert m.n == 15 and all(s >= 0 for s in m.samples_ms) and m.provenance["clock"] == "thread_cpu"
    with pytest.raises(UsageError, match="threads=1"):
        CpuRunner(threads=2, clock="thread_cpu")
    with pytest.raises(UsageError, match="clock"):
        CpuRunner(clock="sundial")


def test_the_sample_clock_option_leaves_the_runners_device_clock_alone():
    """The sample clock is an option of the samples; Runner.now() is the device's time that a
    measuring session stamps its journal with (a string in its place broke every CPU build)."""
    with CpuRunner(clock="thread_cpu") as r:
        assert r.describe()["clock"] == "thread_cpu"
        assert isinstance(r.now(), float)


def test_more_threads_than_pinned_cores_is_refused_in_one_line(own_core, run_cli):
    # Two threads on one core take turns and time each other's waits (a bimodal latency): the
    # runner refuses it and says how to pin enough cores.
    with pytest.raises(UsageError) as e:
        CpuRunner(threads=2, core_mask=own_core[1])
    message = str(e.value)
    assert "--threads 2 on 1 pinned core" in message and "--core-mask 3" in message and "\n" not in message
    with CpuRunner(threads=1, core_mask=own_core[1]) as r:  # as many threads as cores: fine
        assert r.describe()["threads"] == 1
    code, out, err = run_cli("profile", "efficientformerv2_s0", "--device", "cpu", "--threads", "2", "--core-mask",
                             own_core[1])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--threads 2 on 1 pinned core" in err
