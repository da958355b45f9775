import json

import pandas as pd
import pytest
import torch

from latbench.blocks.configs import arch_slots
from latbench.space import named_arch


@pytest.mark.slow
def test_profile_s0_writes_outputs_with_breakdowns(run_cli_json, tmp_path):
    out = tmp_path / "prof"
    res = run_cli_json("profile", "efficientformerv2_s0", "--device", "cpu", "--runs", "20", "--rounds", "2",
                       "--out", str(out))
    assert res["n"] >= 40 and res["median_ms"] > 0  # 20 runs in each of at least 2 rounds, pooled
    assert res["consensus"]["rounds"] >= 2 and res["latency_ms"] == res["consensus"]["value_ms"] > 0
    assert res["provenance"]["runtime"] == "onnxruntime" and res["provenance"]["threads"] == 1
    types = {r["op_type"]: r for r in res["per_op_type"]}
    assert "Conv" in types and sum(r["share"] for r in res["per_op_type"]) == pytest.approx(1.0)
    assert [r["ms"] for r in res["per_op_type"]] == sorted((r["ms"] for r in res["per_op_type"]), reverse=True)
    slots = arch_slots(named_arch("efficientformerv2_s0"))
    blocks = [r for r in res["per_block"] if r["key"] is not None]
    assert [r["key"] for r in blocks] == [s.config.key for s in slots]
    # Every block that computes something got time attributed (attention mixers most of all).
    assert all(r["ms"] > 0 for r in blocks)
    mhsa = [r["ms"] for r in blocks if r["key"].startswith("mhsa-r224-s3")]
    ffn = [r["ms"] for r in blocks if r["key"] == "ffn-r224-s3-c96-e3"]
    assert min(mhsa) > max(ffn)
    for name in ("profile.json", "per_op_type.csv", "per_block.csv", "samples.csv", "breakdown.png"):
        assert (out / name).stat().st_size > 0
    assert len(pd.read_csv(out / "samples.csv")) == res["n"]
    assert json.loads((out / "profile.json").read_text())["median_ms"] == res["median_ms"]
    assert (out / "breakdown.png").read_bytes()[:4] == b"\x89PNG"


def test_profile_onnx_file_directly(run_cli_json, tmp_path):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 8, 3).eval(), torch.randn(1, 3, 32, 32), path, dynamo=False,
                      input_names=["x"])
    res = run_cli_json("profile", str(path), "--runs", "10", "--rounds", "1")
    assert res["target"] == "tiny.onnx" and res["n"] == 10
    assert res["per_op_type"][0]["op_type"] == "Conv"  # (plus layout reorders the runtime inserts)
    assert res["per_block"] == []


@pytest.mark.parametrize("args, needle", [
    (["missing.onnx"], "does not exist"),
    (["efficientformerv2_s9"], "known models are"),
    (["efficientformerv2_s0", "--runs", "0"], "--runs must be >= 1"),
    (["efficientformerv2_s0", "--device", "mac"], "needs macOS"),
    (["efficientformerv2_s0", "--device", "cpu", "--perf-test", "/x"], "does not apply to cpu"),
])
def test_profile_bad_input(run_cli, args, needle):
    code, _, err = run_cli("profile", *args)
    assert code in (1, 2) and needle in err and err.count("\n") == 1


def test_profile_mlpackage_on_cpu_is_refused(run_cli, tmp_path):
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    (pkg / "Manifest.json").write_text("{}")
    code, _, err = run_cli("profile", str(pkg), "--device", "cpu")
    assert code == 2 and "runs onnx artifacts" in err


def test_node_names_map_to_blocks_in_every_exporter_spelling():
    from latbench.measuring.profile import block_of_node

    slots = arch_slots(named_arch("efficientformerv2_s0"))
    by_prefix = {}
    for i, s in enumerate(slots):
        by_prefix.setdefault(s.prefix, []).append(i)
    key = lambda node: slots[block_of_node(node, by_prefix)].config.key  # noqa: E731
    for spelling in ("/network.4/network.4.5/{}", "/network.4/5/{}", "/4/5/{}"):
        assert key(spelling.format("token_mixer/q/q.0/Conv")) == "mhsa-r224-s3-c96"
        assert key(spelling.format("mlp/fc1/Conv")) == "ffn-r224-s3-c96-e4"
    assert key("/network.1/proj/Conv") == key("/1/proj/Conv") == "embed-r224-s1-c32-o48"
    assert key("/5/attn/Softmax") == "attndown-r224-s3-c96-o176"
    assert key("/patch_embed/0/Conv_output_0_nchwc") == "stem-r224-c32"
    assert key("/head/Gemm") == "head-r224-c176"
    assert block_of_node("Gelu_token_14", by_prefix) is None  # fused: inherits the previous node's block
