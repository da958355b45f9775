import json
import os
import sys
from pathlib import Path

import pytest

# Test doubles (fake devices, services) are importable from every test module.
FAKES = Path(__file__).resolve().parent / "fakes"
if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))

# Tests must not write exports into the user's cache.
# Nor reach a real AI Hub with the user's token: the aihub tests point the client at a fake service.
os.environ["QAIHUB_CLIENT_INI"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / "latbench-tests-no-aihub-token.ini")
# Tests measure tiny sets of entries on real clocks in seconds: each session would read its anchors
# until the level span (a minute) was up. The tests of that check set it themselves.
os.environ.setdefault("LATBENCH_LEVEL_SPAN_S", "0")
os.environ.setdefault("LATBENCH_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"latbench-test-cache-{os.getuid()}"))

# Under pytest-xdist (`make test`: -n 2) the workers share the cores: torch and numpy's BLAS would
# each start one OpenMP thread per core and spin-wait against the other worker's (the exports ran
# 2-5x slower on a 2-core VM). Each worker gets its share of the cores; set before torch is
# imported, and inherited by the processes a test starts. A value already set is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))


@pytest.fixture
def run_cli(capsys):
    """Run `latbench ARGS` in-process; returns (exit code, stdout, stderr)."""
    from latbench import cli

    def run(*args: str):
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def run_cli_json(run_cli):
    def run(*args: str):
        code, out, err = run_cli(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    return run


@pytest.fixture
def own_core() -> tuple[int, str]:
    """A core this process may run on and its hex core mask: a CI container's cpuset (or a
    `taskset -c 1` beside a measurement) need not hold core 0."""
    core = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    return core, format(1 << core, "x")
