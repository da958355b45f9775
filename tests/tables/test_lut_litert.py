"""Tables on the `litert` device: build, check, validate, diff against the cpu table, MES measured.

Real conversions (litert-torch) of a one-architecture space without attention (the attention blocks'
conversions are covered in tests/export/test_export_tflite.py and timed on litert in
tests/device_runners/test_litert_runner.py); they land in the test export cache, so a rerun
converts nothing.
"""

import importlib.util

import pandas as pd
import pytest
import yaml

from latbench.space import Arch, StageArch

MISSING = [m for m in ("litert_torch", "ai_edge_litert") if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not importable "
                                 "(pip install 'latbench[litert]')")]

ONE = {
    "name": "one",
    "resolutions": [224],
    "stages": [{"widths": [w], "depth": [1, 1], "expansions": [4], "attention": False} for w in (32, 48, 96, 176)],
}
ARCH = Arch(tuple(StageArch(w, (4,)) for w in (32, 48, 96, 176)), 224)  # the space's one architecture
FAST = ["--runs", "15", "--rounds", "1", "--max-rounds", "1", "--jobs", "2", "--no-reference", "--calibrate", "0"]


def test_litert_table_build_check_validate_diff_and_mes(run_cli, run_cli_json, tmp_path):
    space = tmp_path / "one.yaml"
    space.write_text(yaml.safe_dump(ONE))
    lite, cpu = tmp_path / "litert", tmp_path / "cpu"
    [s] = run_cli_json("lut", "build", "--device", "litert", "--space", str(space), "--out", str(lite), *FAST)
    blocks = pd.read_csv(lite / "blocks.csv")
    assert {"stem", "ffn", "embed", "head", "empty"} <= set(blocks["kind"])
    # Every entry measured (more rounds where the device read slow around one: slow periods).
    assert s["device"] == "litert" and s["measured_now"] == blocks["rounds"].sum() >= len(blocks)
    assert (blocks["n"] == 15 * blocks["rounds"]).all() and (blocks["latency_ms"] > 0).all()
    meta = run_cli_json("lut", "show", str(lite))["meta"]
    assert meta["device_id"] == "litert" and meta["device"]["runtime"] == "ai-edge-litert"
    assert meta["device"]["execution_provider"] == "XNNPACK" and meta["device"]["threads"] == 1
    # LiteRT's built-in kernels are another runtime: the XNNPACK table is not resumed with them
    code, _, err = run_cli("lut", "build", "--device", "litert", "--xnnpack", "off", "--space", str(space),
                           "--out", str(lite), *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "xnnpack: True -> False" in err
    assert pd.read_csv(lite / "blocks.csv").equals(blocks)
    # Built with them into a table of its own, it is checked and validated with them again without
    # being told (the table records its delegate and threads).
    off = tmp_path / "litert-off"
    run_cli_json("lut", "build", "--device", "litert", "--xnnpack", "off", "--threads", "2", "--space", str(space),
                 "--out", str(off), *FAST)
    checked = run_cli_json("lut", "check", str(off), "--sample", "1", "--rounds", "1")
    assert checked["device"]["xnnpack"] is False and checked["device"]["threads"] == 2
    assert not any("provenance" in w for w in checked["warnings"])
    res = run_cli_json("lut", "validate", str(off), "--samples", "1", "--no-named", "--rounds", "1")
    assert res["device"]["xnnpack"] is False and res["device"]["threads"] == 2
    assert not any("provenance" in w for w in res["warnings"])

    checked = run_cli_json("lut", "check", str(lite), "--sample", "2", "--rounds", "1")
    assert checked["checked"] == 2 and checked["device"]["device_kind"] == "litert"

    res = run_cli_json("lut", "validate", str(lite), "--samples", "1", "--no-named", "--rounds", "1")
    assert res["n"] == 1 and res["device"]["runtime"] == "ai-edge-litert"
    [model] = res["models"]
    assert model["measured_ms"] > 0 and model["latency_ms"] > 0 and model["arch"].startswith("w32-48-96-176")

    run_cli_json("lut", "build", "--device", "cpu", "--space", str(space), "--out", str(cpu), *FAST)
    diff = run_cli_json("lut", "diff", str(cpu), str(lite))
    assert diff["common"] == len(blocks) and diff["only_a"] == diff["only_b"] == []
    assert diff["median_ratio"] > 0 and "runtime: 'onnxruntime' -> 'ai-edge-litert'" in diff["provenance_diff"]

    arch_file = tmp_path / "arch.yaml"
    ARCH.save(arch_file)
    [row] = run_cli_json("mes", "report", "--lut", str(lite), str(arch_file), "--measure", "litert", "--rounds", "1",
                         "--latency-unit", "1ms", "--out", str(tmp_path / "m"))
    assert row["measured_ms"] > 0 and row["latency_ms"] > 0
