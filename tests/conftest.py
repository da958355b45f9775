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
os.environ.setdefault("LATBENCH_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"latbench-test-cache-{os.getuid()}"))


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
