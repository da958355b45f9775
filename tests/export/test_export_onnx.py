"""ONNX export: every unique block of the default space and every named model, with parity."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from latbench.blocks.candidates import resolve_candidate
from latbench.blocks.configs import AttnConfig, AttnDownConfig, FFNConfig, space_blocks
from latbench.export import PARITY_TOLERANCE, export_items, export_one
from latbench.models import list_models
from latbench.space import SearchSpace


def _check_onnx_file(path: str, input_shape: tuple[int, ...]) -> None:
    model = onnx.load(path)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == list(input_shape)  # static, batch 1
    for out in model.graph.output:
        assert all(d.HasField("dim_value") for d in out.type.tensor_type.shape.dim)


@pytest.mark.slow
def test_every_block_of_the_default_space_exports_with_parity(tmp_path: Path) -> None:
    blocks = space_blocks(SearchSpace.default(), 224)
    assert len(blocks) == 87
    report = export_items(blocks, ("onnx",), tmp_path, jobs=2, progress=False)
    assert not report.failures, [(r.key, r.error) for r in report.failures]
    assert len(report) == 87 and len(report.exported) == 87
    kinds = Counter()
    for block in blocks:
        rec = report[(block.key, "onnx")]
        kinds[block.kind] += 1
        parity = rec.validation["parity"]
        assert parity["status"] == "passed"
        assert parity["max_abs_diff"] <= PARITY_TOLERANCE["fp32"] * max(1.0, parity["max_abs_reference"])
        assert parity["max_abs_reference"] > 0.1  # prepared weights: a meaningful comparison
        assert rec.validation["checker"] == "passed" and rec.validation["opset"] >= 17
        assert rec.input_names == ["input"] and rec.input_shapes == [list(block.input_shape)]
        assert rec.output_names == ["output"]
        assert Path(rec.path).is_file() and rec.size == Path(rec.path).stat().st_size
    assert set(kinds) == {"stem", "ffn", "mhsa", "embed", "attndown", "head"}
    _check_onnx_file(report[(blocks[0].key, "onnx")].path, blocks[0].input_shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_named_model_exports_with_parity(tmp_path: Path, name: str) -> None:
    # One test per model, in this process: pytest-xdist spreads them over the cores.
    cand = resolve_candidate(name)
    rec = export_one(cand, "onnx", tmp_path)
    assert rec.ok, rec.error
    assert rec.kind == "model" and rec.validation["parity"]["status"] == "passed"
    assert rec.validation["parity"]["max_abs_reference"] > 0.1
    assert rec.output_shapes == [[1, 1000]]
    _check_onnx_file(rec.path, cand.input_shape)


def test_named_models_include_the_reference_set() -> None:
    names = set(list_models())
    assert {f"efficientformerv2_{v}" for v in ("s0", "s1", "s2", "l")} <= names
    assert {"mobilenetv2_100", "mobilevit_xxs", "mobilevit_xs", "mobilevit_s"} <= names


def test_fp16_keeps_fp32_io_and_passes_the_fp16_tolerance(tmp_path: Path) -> None:
    for config in (FFNConfig(224, 2, 64, 3), AttnConfig(224, 4, 176)):
        rec = export_one(config, "onnx", tmp_path, precision="fp16").raise_for_status()
        assert rec.precision == "fp16" and rec.path.endswith(".onnx")
        parity = rec.validation["parity"]
        assert parity["tolerance"] == pytest.approx(PARITY_TOLERANCE["fp16"] * max(1.0, parity["max_abs_reference"]))
        assert parity["max_abs_diff"] > 0  # really computed in half precision
        model = onnx.load(rec.path)
        f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
        assert model.graph.input[0].type.tensor_type.elem_type == f32
        assert model.graph.output[0].type.tensor_type.elem_type == f32
        assert any(init.data_type == f16 for init in model.graph.initializer)
        onnx.checker.check_model(model, full_check=True)


@pytest.mark.slow
def test_dynamo_exporter_is_available_as_an_alternative(tmp_path: Path) -> None:
    config = AttnDownConfig(224, 96, 176)
    report = export_items([config], "onnx", tmp_path, jobs=1, progress=False, onnx_exporter="dynamo")
    rec = report[(config.key, "onnx")]
    assert rec.ok, rec.error
    assert rec.exporter == "dynamo" and rec.validation["parity"]["status"] == "passed"
    ts = export_one(config, "onnx", tmp_path)
    assert ts.exporter == "torchscript" and ts.content_hash != rec.content_hash and ts.path != rec.path
