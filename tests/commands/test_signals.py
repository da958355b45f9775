"""SIGTERM unwinds like Ctrl-C: export workers and the resource tracker stop with latbench, and
the one line says finished work is kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _support import REPO


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below `pid` (from /proc)."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = cmdlines.get(child, "")
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LATBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "latbench", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def poll_until(condition, limit_s: float = 180.0) -> bool:
    """Wait for `condition` (a bound, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_sigterm_during_export_leaves_no_worker_behind(tmp_path):
    proc = start(tmp_path, "export", "--space", "--format", "onnx", "--out", str(tmp_path / "x"), "--jobs", "2",
                 "--no-progress")
    workers: dict[int, str] = {}

    def workers_started() -> bool:
        workers.update({p: c for p, c in descendants(proc.pid).items() if "multiprocessing" in c})
        return sum("spawn_main" in c for c in workers.values()) >= 2 or proc.poll() is not None

    assert poll_until(workers_started), "no export workers started"
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "latbench: terminated; finished work is kept, re-run to resume"
    assert "Traceback" not in err
    assert poll_until(lambda: not any(alive(p) for p in workers), 60), \
        f"left running: {[c for p, c in workers.items() if alive(p)]}"


@pytest.mark.slow
def test_sigterm_mid_build_says_finished_work_is_kept(tmp_path):
    out = tmp_path / "t"
    proc = start(tmp_path, "lut", "build", "--model", "mobilenetv2_100", "--out", str(out), "--runs", "200000",
                 "--jobs", "1", "--no-progress")
    assert poll_until(lambda: (out / "journal.sqlite").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated; finished work is kept, re-run to resume" in err and "Traceback" not in err
