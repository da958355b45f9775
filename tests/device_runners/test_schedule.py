"""interleaved_measure: randomised interleaving, anchor drift, throttling flags, crash-safe hand-out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from device_runners import DeviceLost, Prepared, Runner, interleaved_measure
from device_runners.base import DeviceInfo, SamplingPolicy
from device_runners.cpu import CpuRunner
from device_runners.schedule import ANCHOR_KEY
from latbench.errors import DeviceError, UsageError
from latbench.measurement import THROTTLING_WARNING, Measurement


class ScriptedRunner(Runner):
    """A runner whose device is a script: latency per label, drifting anchor, throttling, loss.

    It stands in for a device the scheduler cannot see inside; only the schedule logic is tested.
    """

    kind = "scripted"
    artifact_format = "onnx"

    def __init__(self, *, anchor_medians=None, throttled_at=(), lost_at=None, fail_labels=()) -> None:
        super().__init__()
        self.device_id = "scripted"
        self.calls: list[str] = []
        self.anchor_medians = list(anchor_medians or [])
        self.throttled_at = set(throttled_at)
        self.lost_at = lost_at
        self.fail_labels = set(fail_labels)

    @classmethod
    def discover(cls, **_: Any) -> list[DeviceInfo]:
        return []

    @classmethod
    def open(cls, device_id: str, **options: Any) -> Runner:
        return cls(**options)

    def describe(self) -> dict[str, Any]:
        return {}

    def _prepare(self, artifact: Path, content_hash: str, label: str) -> Prepared:
        return Prepared(label, content_hash, artifact)

    def measure(self, prepared, *, warmup=10, runs=None, profile=False) -> Measurement:
        n = len(self.calls)
        self.calls.append(prepared.label)
        if self.lost_at is not None and n >= self.lost_at:
            raise DeviceLost("scripted device unplugged", unmeasured=[prepared.label])
        if prepared.label in self.fail_labels:
            raise DeviceError(f"benchmark failed for {prepared.label}")
        if prepared.label == "anchor":
            value = self.anchor_medians.pop(0) if self.anchor_medians else 1.0
        else:
            value = 2.0
        warnings = [f"{THROTTLING_WARNING}: thermal status severe"] if n in self.throttled_at else []
        return Measurement(prepared.label, [value] * 5, warnings=warnings)


def items(n: int) -> dict[str, Prepared]:
    return {f"m{i}": Prepared(f"m{i}", f"h{i}", Path(f"m{i}.onnx")) for i in range(n)}


ANCHOR = Prepared("anchor", "ha", Path("anchor.onnx"))


def test_order_is_randomised_per_round_and_reproducible():
    run = interleaved_measure(ScriptedRunner(), items(6), rounds=3, seed=42)
    plan = run.plan()
    rounds = [[k for r, k in plan if r == i] for i in range(3)]
    assert all(sorted(r) == [f"m{i}" for i in range(6)] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not the same order every round
    assert plan == interleaved_measure(ScriptedRunner(), items(6), rounds=3, seed=42).plan()
    assert plan != interleaved_measure(ScriptedRunner(), items(6), rounds=3, seed=43).plan()


def test_anchor_measured_first_periodically_and_last():
    plan = interleaved_measure(ScriptedRunner(), items(5), anchor=ANCHOR, anchor_every=2).plan()
    keys = [k for _, k in plan]
    assert keys[0] == ANCHOR_KEY and keys[-1] == ANCHOR_KEY
    assert keys.count(ANCHOR_KEY) == 4  # start, after 2, after 4, end
    assert sum(k != ANCHOR_KEY for k in keys) == 5


def test_results_are_handed_out_as_soon_as_measured():
    runner = ScriptedRunner()
    seen_at_callback = []
    progress = []

    def on_result(result):
        # When the callback runs, the runner has measured exactly up to this result.
        seen_at_callback.append((result.key, len(runner.calls)))

    run = interleaved_measure(
        runner, items(4), anchor=ANCHOR, anchor_every=2, on_result=on_result,
        on_progress=lambda done, total, key: progress.append((done, total)),
    )
    for count, result in enumerate(run, start=1):
        assert len(runner.calls) == count  # yielded before the next measurement starts
        assert result.index == count - 1
    assert [c for _, c in seen_at_callback] == list(range(1, len(runner.calls) + 1))
    assert progress == [(i, 4) for i in range(1, 5)]
    assert set(run.report.measurements()) == set(items(4))


def test_drift_is_reported_and_window_marked_suspect():
    # anchor medians: 1.0 at start, 1.1 after two items (+10 %), back to 1.0 at the end
    runner = ScriptedRunner(anchor_medians=[1.0, 1.1, 1.0])
    report = interleaved_measure(runner, items(4), anchor=ANCHOR, anchor_every=2, drift_tolerance=0.05).run()
    assert report.drift == pytest.approx([0.1, 0.0])
    assert report.max_drift == pytest.approx(0.1)
    first_window = [r.key for r in report.results if not r.is_anchor][:2]
    assert report.suspect == first_window
    # Items measured after the drifting anchor carry a warning; the drift is in each result.
    later = [r for r in report.results if not r.is_anchor][2:]
    assert all(any("anchor drift +10.0%" in w for w in r.measurement.warnings) for r in later)
    assert all(r.anchor_drift == pytest.approx(0.1) for r in later)


def test_throttled_results_are_flagged():
    runner = ScriptedRunner(throttled_at={2})
    report = interleaved_measure(runner, items(3)).run()
    throttled = [r for r in report.results if r.throttled]
    assert len(throttled) == 1 and report.throttled == [throttled[0].key]


def test_device_lost_carries_the_unmeasured_keys_and_keeps_the_rest():
    runner = ScriptedRunner(lost_at=3)
    committed = []
    run = interleaved_measure(runner, items(5), rounds=2, on_result=lambda r: committed.append(r.key))
    with pytest.raises(DeviceLost) as lost:
        run.run()
    assert len(committed) == 3
    assert set(committed) | set(lost.value.unmeasured) == set(items(5))
    plan_keys = [k for _, k in run.plan()]
    assert lost.value.unmeasured == list(dict.fromkeys(plan_keys[3:]))


def test_per_item_errors_can_be_collected_instead_of_stopping():
    errors = []
    runner = ScriptedRunner(fail_labels={"m1"})
    report = interleaved_measure(runner, items(3), on_error=lambda k, e: errors.append(k)).run()
    assert errors == ["m1"] and "m1" in report.failed
    assert set(report.measurements()) == {"m0", "m2"}
    with pytest.raises(DeviceError):
        interleaved_measure(ScriptedRunner(fail_labels={"m1"}), items(3)).run()


def test_duplicate_labels_are_rejected():
    a = Prepared("same", "h1", Path("a.onnx"))
    b = Prepared("same", "h2", Path("b.onnx"))
    with pytest.raises(UsageError, match="share the label"):
        interleaved_measure(ScriptedRunner(), [a, b])


def test_interleaved_on_the_real_cpu_runner(models):
    with CpuRunner(policy=SamplingPolicy(min_runs=20, time_cap_s=0.5, warmup_time_s=0.0)) as runner:
        prepared = {name: runner.prepare(models[name], label=name) for name in ("small", "medium")}
        anchor = runner.prepare(models["small"], label="small")
        report = interleaved_measure(runner, prepared, anchor=anchor, rounds=2, anchor_every=2, warmup=2, runs=20).run()
    per_key = report.measurements()
    assert {k: len(v) for k, v in per_key.items()} == {"small": 2, "medium": 2}
    assert len(report.anchor_medians) == 3 and len(report.drift) == 2
    # the 3-layer 16-channel model does more work than the 1-layer 8-channel one
    assert min(m.median for m in per_key["medium"]) > max(m.median for m in per_key["small"])
