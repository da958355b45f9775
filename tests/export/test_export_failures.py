"""Failure isolation: one broken configuration is reported and the others still export."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from latbench import api
from latbench.blocks.configs import FFNConfig, StemConfig
from latbench.export import MANIFEST_NAME, export_items


class TracingSensitive(nn.Module):
    """Honest stand-in for an export bug: the graph that tracing records differs from eager mode.

    This is what happens whenever a forward consults tracing state (or Python-side values that
    tracing freezes); the ONNX graph then computes something else than the PyTorch module.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 1.5 if torch.jit.is_tracing() else y


@dataclass(frozen=True)
class FakeItem:
    """A minimal exportable item (key/kind/input_shape/build) with a chosen way to fail."""

    name: str
    behaviour: str = "ok"  # ok | raise | tracing | crash

    @property
    def key(self) -> str:
        return f"fake-{self.name}"

    @property
    def kind(self) -> str:
        return "fake"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 4, 8, 8)

    def build(self) -> nn.Module:
        if self.behaviour == "raise":
            raise RuntimeError("cannot build this configuration (on purpose)")
        if self.behaviour == "crash":
            os._exit(3)  # a segfaulting converter looks like this to the parent
        if self.behaviour == "tracing":
            return TracingSensitive()
        return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU())


def test_a_failing_build_is_reported_and_the_others_export(tmp_path: Path) -> None:
    items = [FakeItem("a"), FakeItem("broken", "raise"), StemConfig(224, 32)]
    report = export_items(items, ("onnx",), tmp_path, jobs=1, progress=False)
    assert [r.status for r in report] == ["exported", "failed", "exported"]
    (bad,) = report.failures
    assert bad.key == "fake-broken"
    assert bad.error == "RuntimeError: cannot build this configuration (on purpose)"
    assert "Traceback" in bad.traceback and bad.path is not None and not Path(bad.path).exists()
    assert not report.ok
    entries = {e["key"]: e for e in json.loads((tmp_path / MANIFEST_NAME).read_text())["artifacts"]}
    assert entries["fake-broken"]["status"] == "failed"
    # A failure is retried on the next run, never served from the cache.
    again = export_items(items, ("onnx",), tmp_path, jobs=1, progress=False)
    assert [r.status for r in again] == ["cached", "failed", "cached"]


def test_a_parity_failure_fails_that_artifact_only(tmp_path: Path) -> None:
    items = [FakeItem("traced", "tracing"), FakeItem("fine")]
    report = export_items(items, ("onnx",), tmp_path, jobs=1, progress=False)
    bad, good = report[("fake-traced", "onnx")], report[("fake-fine", "onnx")]
    assert good.status == "exported" and good.validation["parity"]["status"] == "passed"
    assert bad.status == "failed"
    assert bad.error.startswith("parity check failed: max abs diff")
    parity = bad.validation["parity"]
    assert parity["status"] == "failed" and parity["max_abs_diff"] > parity["tolerance"]
    assert Path(bad.path).is_file()  # kept for inspection, but marked failed in the manifest
    assert export_items(items[:1], ("onnx",), tmp_path, jobs=1, progress=False).failures


def test_command_lists_failures_and_exits_nonzero(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = [FakeItem("traced", "tracing"), FakeItem("broken", "raise"), FFNConfig(224, 1, 32, 2)]
    monkeypatch.setattr(api, "export_targets", lambda **targets: items)
    code, out, err = run_cli("export", "--space", "--format", "onnx", "--out", str(tmp_path), "--jobs", "1")
    assert code == 1, err
    assert "3 artifacts: 1 exported, 0 cached, 2 failed" in out
    assert "fake-traced [onnx]: parity check failed" in out
    assert "fake-broken [onnx]: RuntimeError: cannot build this configuration" in out

    code, out, err = run_cli("export", "--space", "--format", "onnx", "--out", str(tmp_path), "--jobs", "1", "--json")
    assert code == 1
    rows = {(r["key"], r["format"]): r for r in json.loads(out)}
    assert rows[("fake-broken", "onnx")]["status"] == "failed" and "RuntimeError" in rows[("fake-broken", "onnx")]["error"]
    assert rows[("fake-traced", "onnx")]["status"] == "failed"
    ok = rows[(items[2].key, "onnx")]
    assert ok["status"] == "cached" and ok["error"] is None and len(ok["sha256"]) == 64 and ok["size"] > 0


@pytest.mark.slow
def test_worker_processes_isolate_failures_and_crashes(tmp_path: Path) -> None:
    items = [FakeItem("w1"), FakeItem("crasher", "crash"), FakeItem("w2"), FakeItem("boom", "raise"), FakeItem("w3")]
    report = export_items(items, ("onnx",), tmp_path, jobs=2, progress=False)
    status = {r.key: r.status for r in report}
    assert status == {"fake-w1": "exported", "fake-crasher": "failed", "fake-w2": "exported",
                      "fake-boom": "failed", "fake-w3": "exported"}
    assert "worker process died" in report[("fake-crasher", "onnx")].error
    assert "RuntimeError" in report[("fake-boom", "onnx")].error
    assert list(report.records) == [(i.key, "onnx") for i in items]  # input order, whatever finished first
    import multiprocessing

    assert not multiprocessing.active_children()  # no orphaned worker of the broken pools


@pytest.mark.slow
def test_interrupting_a_parallel_export_stops_the_workers_and_keeps_finished_work(tmp_path: Path) -> None:
    import multiprocessing

    items = [FakeItem(f"i{i}") for i in range(8)]
    finished: list[str] = []

    def interrupt_after_three(rec) -> None:
        finished.append(rec.key)
        if len(finished) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_items(items, ("onnx",), tmp_path, jobs=2, progress=False, on_result=interrupt_after_three)
    assert not multiprocessing.active_children(), multiprocessing.active_children()  # our workers are gone
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())["artifacts"]
    assert {e["key"] for e in manifest} == set(finished)
    resumed = export_items(items, ("onnx",), tmp_path, jobs=1, progress=False)
    assert sum(r.status == "cached" for r in resumed) == 3 and resumed.ok
    assert not list(tmp_path.rglob(".tmp-*"))
