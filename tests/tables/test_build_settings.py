"""The sampling a table build gives each role (latbench.tables.build.BuildSettings.policies)."""

from __future__ import annotations

import types

import pytest

from latbench.tables.build import BuildSettings


class _FakeClock:
    """A clock that only moves when the measured thing runs: warm-up lengths become exact."""

    def __init__(self) -> None:
        self.ns = 0

    def perf_counter_ns(self) -> int:
        return self.ns


@pytest.mark.parametrize(("role", "run_ms", "warmup_runs", "timed_runs", "stopped_by"), [
    ("model", 200.0, 3, 20, "time_cap"),  # a slow model: three runs are past the time floor; 4 s cap
    ("model", 20.0, 13, 50, "ci"),        # a fast one: 0.25 s of warm-up
    ("block", 1.0, 50, 300, "ci"),        # blocks keep their count, 0.05 s floor, 50 runs, 0.3 s
    ("block", 20.0, 10, 50, "ci"),
])
def test_whole_models_warm_up_by_time_blocks_by_count(monkeypatch, role: str, run_ms: float, warmup_runs: int,
                                                      timed_runs: int, stopped_by: str) -> None:
    import device_runners.base as base

    clock = _FakeClock()
    monkeypatch.setattr(base, "time", types.SimpleNamespace(perf_counter_ns=clock.perf_counter_ns))

    def run_once() -> None:
        clock.ns += int(run_ms * 1e6)

    policy = BuildSettings().policies()[role]
    _, info, _ = base.sample_latencies(run_once, policy)
    assert info["warmup_runs"] == warmup_runs
    assert (info["timed_runs"], info["stopped_by"]) == (timed_runs, stopped_by)
    assert info["warmup_runs"] * run_ms / 1000 >= policy.warmup_time_s
    fixed = BuildSettings(runs=5).policies()[role]
    assert fixed.runs == 5 and fixed.warmup_runs == policy.warmup_runs
