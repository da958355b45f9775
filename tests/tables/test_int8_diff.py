"""`lut diff` of an fp32 and an int8 table of one device: per-block speedups and per-kind int8/fp32
ratios (median, min, max, count). The device is a script whose int8 timings are its fp32 ones
times a factor per block kind, so the ratios the diff must find are known exactly; blocks,
exports (real int8 ONNX), journals and tables are the real ones."""

from __future__ import annotations

import pytest
from scripted_device import ScriptedInt8Runner, ScriptedRunner, latency_following_macs

from latbench.blocks.configs import AttnConfig, FFNConfig
from latbench.tables.build import BuildSettings, TableBuilder

BLOCKS = [FFNConfig(224, 3, w, e) for w in (96, 144) for e in (2, 4)] + [AttnConfig(224, 3, 96)]
#: int8 time / fp32 time by kind, as this scripted device runs them (one kind slower in int8).
FACTORS = {"ffn": 0.6, "mhsa": 1.25, "attndown": 0.8, "empty": 1.1}
fp32_cost = latency_following_macs(BLOCKS, other_ms=0.05)


def _kind(key: str) -> str:
    return key.split("-", 1)[0]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    out = tmp_path_factory.mktemp("diff")
    settings = dict(min_separation_s=0.0, profile=False, calibration_models=0, jobs=1)
    runners = {"fp32": ScriptedRunner(fp32_cost, clock_step_s=0.3),
               "int8": ScriptedInt8Runner(lambda key: fp32_cost(key) * FACTORS[_kind(key)], clock_step_s=0.3)}
    for dtype, runner in runners.items():
        TableBuilder(runner, out / dtype, BuildSettings(precision=dtype, **settings)).build(BLOCKS)
    return out / "fp32", out / "int8"


def test_diff_gives_per_kind_ratios_and_per_block_speedups(tables):
    from latbench import api

    diff = api.diff_tables(*tables)
    assert diff["ratio"] == "int8/fp32"
    kinds = {k["kind"]: k for k in diff["kinds"]}
    rows = diff["rows"]
    assert set(kinds) == {_kind(r["key"]) for r in rows}
    for kind, k in kinds.items():
        assert k["count"] == sum(1 for r in rows if r["kind"] == kind)
        assert k["median_ratio"] == pytest.approx(FACTORS[kind], rel=1e-3)
        assert k["min_ratio"] <= k["median_ratio"] <= k["max_ratio"]
    assert kinds["ffn"]["count"] >= len([b for b in BLOCKS if b.kind == "ffn"])
    # Ordered by median ratio: the kind int8 speeds up most first, the one it slows down last.
    assert [k["kind"] for k in diff["kinds"]][0] == "ffn" and diff["kinds"][-1]["kind"] == "mhsa"
    for r in rows:
        assert r["speedup"] == pytest.approx(1 / FACTORS[r["kind"]], rel=1e-3)
        assert r["ratio"] * r["speedup"] == pytest.approx(1.0)


def test_diff_from_the_command_line(tables, run_cli, run_cli_json):
    fp32, int8 = (str(t) for t in tables)
    data = run_cli_json("lut", "diff", fp32, int8)
    assert {k["kind"] for k in data["kinds"]} >= {"ffn", "mhsa", "empty"}
    code, out, err = run_cli("lut", "diff", fp32, int8)
    assert code == 0, err
    assert "int8/fp32 per block kind" in out and "speedup" in out
    # Same precision on both sides: a plain B/A comparison.
    same = run_cli_json("lut", "diff", fp32, fp32)
    assert same["ratio"] == "B/A" and all(k["median_ratio"] == pytest.approx(1.0) for k in same["kinds"])
