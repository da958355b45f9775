"""A fast command line: the commands that only read tables import no torch (checked with
`python -X importtime`); the start-up figures themselves are in benchmarks/bench_cli.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _support import REPO

HEAVY = ("torch", "onnx", "onnxruntime", "coremltools", "matplotlib")


def imported(*args: str, cwd) -> set[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "latbench", *args], capture_output=True,
                          text=True, cwd=cwd)
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from latbench.tables.synthetic import synthetic_table

    path = tmp_path_factory.mktemp("fast") / "t"
    t = synthetic_table()
    t.meta["device"] = {"device_kind": "synthetic"}
    t.save(path)
    return path


@pytest.mark.parametrize("args", [
    ["--help"],
    ["lut", "--help"],
    ["lut", "show", "{t}"],
    ["lut", "estimate", "{t}", "efficientformerv2_s0"],
    ["mes", "report", "--lut", "{t}", "efficientformerv2_s0", "mobilenetv2_100", "--out", "{o}"],
])
def test_table_commands_import_no_torch(args, table, tmp_path):
    names = imported(*[a.replace("{t}", str(table)).replace("{o}", str(tmp_path / "rep")) for a in args], cwd=REPO)
    assert "latbench" in names  # the probe saw the imports at all
    heavy = sorted(set(HEAVY) & names)
    if args[:2] == ["mes", "report"]:
        heavy = [m for m in heavy if m != "matplotlib"]  # the report draws its plots
    assert heavy == [], f"{' '.join(args)} imported {heavy}"
