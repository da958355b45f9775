"""TFLite export: pool substitution, XNNPACK delegation, parity, the cache, the missing-extra message."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from latbench.blocks.configs import AttnDownConfig, FFNConfig
from latbench.core.errors import UsageError
from latbench.core.hashing import tree_sha256
from latbench.export import export_items, export_one
from latbench.export import tflite as tflite_mod
from latbench.export.common import ArtifactRecord, prepared_module, seeded_input
from latbench.export.inspect import tflite_inputs

MISSING = [m for m in tflite_mod.REQUIRED_MODULES if importlib.util.find_spec(m) is None]
needs_litert = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not importable "
                                  "(pip install 'latbench[litert]')")

ATTNDOWN = AttnDownConfig(224, 120, 176)  # the space's smallest stage-3 -> stage-4 downsampling
FFN = FFNConfig(224, 1, 32, 2)


# -- substitution (PyTorch only) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (nn.AvgPool2d(1, 2, 0), True),
        (nn.AvgPool2d(1, (2, 1)), True),
        (nn.MaxPool2d(1, 2), True),
        (nn.AvgPool2d(1, 1), False),  # no subsampling
        (nn.AvgPool2d(3, 2, 1), False),  # a real pooling window
        (nn.AvgPool2d(1, 2, divisor_override=2), False),  # scales the values
        (nn.MaxPool2d(1, 2, dilation=2), False),
        (nn.Conv2d(4, 4, 1, stride=2), False),
    ],
)
def test_strided_unit_pool_detection(pool: nn.Module, expected: bool) -> None:
    assert tflite_mod.is_strided_unit_pool(pool) is expected


@pytest.mark.parametrize("mode", ["dwconv", "slice"])
@pytest.mark.parametrize("size", [14, 7])  # even and odd maps: ceil(H / 2) rows either way
def test_substitution_is_bit_identical_and_leaves_the_model_alone(mode: str, size: int) -> None:
    block = AttnDownConfig(size * 16, 120, 176)  # a stage-3 map of size x size
    module = prepared_module(block)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = seeded_input(block.input_shape, 0)
    assert x.shape[-1] == size

    converted, info = tflite_mod.substitute_pools(module, x, mode)
    assert converted is not module
    assert [r["module"] for r in info["replaced"]] == ["attn.q.pool"]
    assert info["replaced"][0]["stride"] == [2, 2] and info["replaced"][0]["channels"] == 120
    assert tflite_mod.check_substitution(module, converted, x)
    assert tflite_mod.check_substitution(module, converted, seeded_input(block.input_shape, 7))
    # The PyTorch model keeps its AvgPool2d and its exact weights (checkpoints load as before).
    assert isinstance(module.attn.q.pool, nn.AvgPool2d)
    assert not isinstance(converted.attn.q.pool, nn.AvgPool2d)
    after = module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    if mode == "dwconv":
        assert set(converted.state_dict()) == set(after) | {"attn.q.pool.weight"}


def test_a_wrong_substitute_is_caught_by_the_check() -> None:
    module = prepared_module(ATTNDOWN)
    x = seeded_input(ATTNDOWN.input_shape, 0)
    converted, _ = tflite_mod.substitute_pools(module, x, "dwconv")
    with torch.no_grad():
        converted.attn.q.pool.weight.mul_(1.001)  # no longer an exact subsampling
    assert not tflite_mod.check_substitution(module, converted, x)


def test_nothing_to_substitute_returns_the_module_itself() -> None:
    module = prepared_module(FFN)
    same, info = tflite_mod.substitute_pools(module, seeded_input(FFN.input_shape, 0), "dwconv")
    assert same is module and info["replaced"] == []
    attn = prepared_module(ATTNDOWN)
    kept, info = tflite_mod.substitute_pools(attn, seeded_input(ATTNDOWN.input_shape, 0), "none")
    assert info == {"mode": "none", "replaced": []} and kept is attn
    with pytest.raises(ValueError, match="unknown pool substitute"):
        tflite_mod.substitute_pools(module, None, "maxpool")


# -- bad input, with or without the extra ---------------------------------------------------------


def hide_litert(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args, **kw):
        return None if name.split(".")[0] in tflite_mod.REQUIRED_MODULES else real(name, *args, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_extra_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hide_litert(monkeypatch)
    with pytest.raises(UsageError) as exc:
        export_items([FFN], "onnx,tflite", tmp_path, progress=False)
    message = str(exc.value)
    assert message == ("the tflite format needs litert-torch and ai-edge-litert, which are not installed: "
                       "pip install 'latbench[litert]'")
    assert not list(tmp_path.rglob("*.onnx"))  # nothing exported before the check


def test_missing_extra_through_the_cli(monkeypatch: pytest.MonkeyPatch, run_cli, tmp_path: Path) -> None:
    hide_litert(monkeypatch)
    code, out, err = run_cli("export", "--space", "--format", "tflite", "--out", str(tmp_path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "pip install 'latbench[litert]'" in err


def test_fp16_is_refused_up_front(run_cli, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="the tflite format is fp32 or int8 only, not fp16"):
        export_items([FFN], "onnx,tflite", tmp_path, precision="fp16")
    code, _, err = run_cli("export", "--model", "efficientformerv2_s0", "--format", "tflite", "--precision", "fp16",
                           "--out", str(tmp_path))
    assert code == 2 and "fp32 or int8 only" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer at all", b"\x18\x00\x00\x00TFL3" + b"\xff" * 8])
def test_unreadable_tflite_file_is_a_usage_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.tflite"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="broken.tflite is not a readable TFLite model") as err:
        tflite_inputs(path)
    assert "\n" not in str(err.value)


# -- conversion and validation (needs the extra) --------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ArtifactRecord]]:
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not importable")
    out = tmp_path_factory.mktemp("tflite")
    report = export_items([ATTNDOWN, FFN], "tflite", out, jobs=1)
    return out, {r.key: r for r in report}


@needs_litert
def test_attention_downsampling_converts_fully_delegated_with_parity(exported) -> None:
    rec = exported[1][ATTNDOWN.key]
    assert rec.ok, rec.error
    assert rec.format == "tflite" and rec.precision == "fp32" and rec.exporter == "litert-torch+dwconv-pool"
    path = Path(rec.path)
    assert path.suffix == ".tflite" and path.parent.name == "tflite"
    assert rec.sha256 == tree_sha256(path) and rec.size == path.stat().st_size
    assert rec.input_names == ["args_0"] and rec.input_shapes == [list(ATTNDOWN.input_shape)]
    assert rec.output_names == ["output_0"] and rec.output_shapes == [[1, 176, 7, 7]]
    assert set(rec.versions) >= {"torch", "litert-torch", "ai-edge-litert", "litert-converter", "latbench"}

    v = rec.validation
    parity = v["parity"]
    assert parity["status"] == "passed" and 0 <= parity["max_abs_diff"] <= parity["tolerance"]
    assert parity["runtime"].startswith("ai-edge-litert")
    ops = v["op_counts"]
    assert "AVERAGE_POOL_2D" not in ops and ops["DEPTHWISE_CONV_2D"] >= 3 and ops["SOFTMAX"] == 1
    x = v["xnnpack"]
    assert x["fully_delegated"] and x["partitions"] == 1 and x["undelegated_ops"] == {}
    assert x["nodes"] == sum(ops.values()) == x["delegated_nodes"]
    sub = v["pool_substitution"]
    assert sub["mode"] == "dwconv" and sub["torch_identical"] and sub["replaced"][0]["module"] == "attn.q.pool"
    assert rec.timings["convert"] > 0 and rec.timings["trace"] == 0.0
    # What a runner reads from the file itself agrees with the record.
    [spec] = tflite_inputs(path)
    assert spec.shape == ATTNDOWN.input_shape and spec.dtype == "float32"


@needs_litert
def test_manifest_records_the_substitution_and_a_second_export_is_a_cache_hit(exported) -> None:
    out, recs = exported
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["key"]: e for e in manifest["artifacts"]}
    assert entries[ATTNDOWN.key]["validation"]["pool_substitution"]["replaced"][0]["op"] == "AvgPool2d"
    assert entries[FFN.key]["validation"]["pool_substitution"] == {"mode": "dwconv", "replaced": []}
    assert entries[FFN.key]["validation"]["xnnpack"]["fully_delegated"]
    again = export_one(ATTNDOWN, "tflite", out)
    assert again.status == "cached" and again.sha256 == recs[ATTNDOWN.key].sha256
    # Other formats of the same block have their own hash and file.
    assert export_one(FFN, "onnx", out).content_hash != recs[FFN.key].content_hash


@needs_litert
def test_export_command_shows_the_delegation(exported) -> None:
    from latbench.commands.export import _check, _grouped

    recs = list(exported[1].values())
    assert all(_check(r).startswith("parity passed") and _check(r).endswith("fully on XNNPACK") for r in recs)
    [(kind, fmt, prec, status, n, _, _, check)] = _grouped([r for r in recs if r.kind == "ffn"])
    assert (kind, fmt, prec, status, n) == ("ffn", "tflite", "fp32", "exported", 1)
    assert check.endswith("1/1 fully on XNNPACK")
    split = ArtifactRecord.from_dict({**recs[0].to_dict(), "validation": {
        **recs[0].validation, "xnnpack": {"partitions": 2, "fully_delegated": False,
                                          "undelegated_ops": {"AVERAGE_POOL_2D": 1}}}})
    assert _check(split).endswith("XNNPACK 2 partition(s), not delegated: AVERAGE_POOL_2D x1")


@needs_litert
@pytest.mark.slow
@pytest.mark.parametrize(("mode", "left_out"), [("none", "AVERAGE_POOL_2D"), ("slice", "STRIDED_SLICE")])
def test_pool_and_strided_slice_split_the_graph(tmp_path: Path, mode: str, left_out: str) -> None:
    """Why the default is the depthwise conv: XNNPACK takes neither a 1x1 stride-2 pool nor a
    strided STRIDED_SLICE, so both leave ops on the built-in kernels and make two partitions."""
    rec = ArtifactRecord(key="k", kind="attndown", format="tflite", precision="fp32", status="exported")
    tflite_mod.export_tflite(ATTNDOWN, tmp_path / "m.tflite", rec, pool_substitute=mode)
    x = rec.validation["xnnpack"]
    assert rec.error is None and rec.validation["parity"]["status"] == "passed"
    assert not x["fully_delegated"] and x["partitions"] == 2
    assert set(x["undelegated_ops"]) == {left_out}
