"""int8 LiteRT: ai-edge-quantizer's full-integer quantization of every block kind, its parity,
the recipe in the manifest and cache key, the op-less empty model as a quantize/dequantize pair,
and the litert runner measuring int8 graphs with XNNPACK and with the built-in kernels (real
conversions, real LiteRT interpreters; small blocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _support import (
    TINY_BUILD,
    assert_int8_block_record,
    export_every_kind,
    manifest_recipes,
    one_block_per_kind,
)

from latbench.core.errors import UsageError
from latbench.export import export_items, export_one
from latbench.export.quantize import QuantRecipe
from latbench.measuring.measurement import SamplingPolicy

pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("litert_torch")

KINDS = one_block_per_kind()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return export_every_kind("tflite", tmp_path_factory.mktemp("int8-tflite"))


def _tensors(path: str) -> list[tuple[object, bool]]:
    """Subgraph 0's tensors, each with whether it is a constant (its buffer holds data)."""
    from ai_edge_litert import schema_py_generated as s

    model = s.Model.GetRootAs(Path(path).read_bytes(), 0)
    sg = model.Subgraphs(0)
    tensors = [sg.Tensors(t) for t in range(sg.TensorsLength())]
    return [(t, model.Buffers(t.Buffer()).DataLength() > 0) for t in tensors]


def _tensor_types(path: str) -> set[int]:
    return {int(t.Type()) for t, _ in _tensors(path)}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_block_kind_quantizes_to_full_integer_and_passes_parity(report, kind):
    from ai_edge_litert import schema_py_generated as s

    from latbench.export.inspect import tflite_inputs, tflite_precision
    from latbench.export.tflite import op_inventory
    from latbench.export.tflite_quant import LITERT_INT8_PARITY, litert_recipe

    rec = report[(KINDS[kind].key, "tflite")]
    assert_int8_block_record(rec, KINDS[kind].key, LITERT_INT8_PARITY["block"])
    ops = op_inventory(rec.path)
    # float32 in and out: one QUANTIZE after the input, a DEQUANTIZE before the output.
    assert ops.get("QUANTIZE", 0) >= 1 and ops.get("DEQUANTIZE", 0) >= 1
    assert [spec.dtype for spec in tflite_inputs(Path(rec.path))] == ["float32"]
    assert tflite_precision(Path(rec.path)) == "int8"
    types = _tensor_types(rec.path)
    assert s.TensorType.INT8 in types  # int8 activations (and weights where the block has some)
    if kind != "empty":
        assert s.TensorType.INT32 in types  # int32 biases: integer convolutions / fully connected layers
    assert rec.quantization == litert_recipe(QuantRecipe())


def test_empty_model_is_one_quantize_dequantize_pair(report):
    from latbench.export.tflite import op_inventory

    rec = report[(KINDS["empty"].key, "tflite")]
    assert op_inventory(rec.path) == {"DEQUANTIZE": 1, "QUANTIZE": 1}
    assert rec.validation["xnnpack"]["fully_delegated"]  # XNNPACK converts both ways itself


def _activation_zero_points(path: str) -> set[int]:
    """Zero points of every int8 tensor that is not a constant (the activations)."""
    from ai_edge_litert import schema_py_generated as s

    zps: set[int] = set()
    for tensor, constant in _tensors(path):
        q = tensor.Quantization()
        if int(tensor.Type()) == s.TensorType.INT8 and not constant and q is not None:
            zps |= {int(q.ZeroPoint(i)) for i in range(q.ZeroPointLength())}
    return zps


def test_int8_activations_are_symmetric_so_xnnpack_takes_the_attention_matmuls(report):
    """XNNPACK runs an int8 BATCH_MATMUL only on operands with zero point 0: with asymmetric
    activations the attention's matmuls fell to the built-in kernels, except where calibration
    happened to land on 0, and an isolated block then timed half of what it costs in a model."""
    from latbench.export.tflite import op_inventory

    rec = report[(KINDS["mhsa"].key, "tflite")]
    assert op_inventory(rec.path).get("BATCH_MATMUL", 0) == 2
    assert "BATCH_MATMUL" not in rec.validation["xnnpack"]["undelegated_ops"]
    zero_points = {kind: _activation_zero_points(report[(KINDS[kind].key, "tflite")].path) for kind in KINDS}
    for kind, zps in sorted(zero_points.items()):
        # -128 only where a kernel fixes the output range (softmax-like outputs over [0, 1]).
        assert zps <= {0, -128}, kind
    assert 0 in zero_points["mhsa"]


def test_manifest_records_the_litert_recipe(report):
    recipes = manifest_recipes(report, "tflite")
    assert len(recipes) == len(KINDS)
    for q in recipes:
        assert q["method"].startswith("ai_edge_quantizer") and q["quantizer_version"]
        assert q["calibration_seed"] == 0 and q["calibration_batches"] == 8 and q["activation_type"] == "int8"
        assert q["per_channel"] is True and q["activation_granularity"].startswith("per tensor, symmetric")


def test_litert_recipes_it_cannot_make_are_one_line():
    with pytest.raises(UsageError, match="^int8 LiteRT calibrates by minmax only, not 'entropy'$"):
        export_items([KINDS["empty"]], "tflite", precision="int8", quantization={"calibrate_method": "entropy"})


def test_litert_parity_fails_a_wrong_graph():
    from latbench.export.quantize import quantized_parity
    from latbench.export.tflite_quant import LITERT_INT8_PARITY

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 64, 14, 14))
    noisy = ref + 0.03 * rng.standard_normal(ref.shape)  # quantization-sized error
    assert quantized_parity([ref], [noisy], "ffn", LITERT_INT8_PARITY)["status"] == "passed"
    assert quantized_parity([ref], [np.maximum(ref, 0)], "ffn", LITERT_INT8_PARITY)["status"] == "failed"
    assert quantized_parity([ref], [np.maximum(ref, 0)], "model", LITERT_INT8_PARITY)["status"] == "failed"


@pytest.mark.parametrize("xnnpack", [True, False])
def test_litert_runner_measures_int8_and_records_precision(report, xnnpack):
    from device_runners.litert import LiteRTRunner

    rec = report[(KINDS["mhsa"].key, "tflite")]
    runner = LiteRTRunner(xnnpack=xnnpack)
    m = runner.measure(runner.prepare(Path(rec.path)), SamplingPolicy.fixed(5, 2))
    assert m.n == 5 and all(s > 0 for s in m.samples_ms)
    assert m.provenance["precision"] == "int8" and m.provenance["input_dtype"] == "float32"
    assert runner.describe()["execution_provider"] == ("XNNPACK" if xnnpack else "builtin")
    delegation = runner.prepare(Path(rec.path)).info["delegation"]
    if xnnpack:  # XNNPACK took int8 nodes (its QS8 kernels), not nothing
        assert delegation["partitions"] >= 1 and delegation["delegated_nodes"] > 0
    else:
        assert delegation is None
    fp32 = export_one(KINDS["mhsa"], "tflite", Path(rec.path).parents[1])
    assert runner.measure(runner.prepare(Path(fp32.path)), SamplingPolicy.fixed(3, 1)).provenance["precision"] == "fp32"


def test_tiny_int8_litert_table(tmp_path):
    """The anchors measured on the litert runner in int8: the table records the LiteRT recipe."""
    from device_runners.litert import LiteRTRunner
    from latbench.tables.build import BuildSettings, TableBuilder, default_anchors

    configs = default_anchors(224)
    settings = TINY_BUILD
    res = TableBuilder(LiteRTRunner(), tmp_path / "int8", BuildSettings(precision="int8", **settings)).build(configs)
    table = res.table
    assert table.meta["precision"] == "int8" and table.meta["device"]["precision"] == "int8"
    assert table.meta["quantization"]["method"].startswith("ai_edge_quantizer")
    assert {c.key for c in configs} <= set(table.blocks["key"])
    assert (table.blocks["latency_ms"] > 0).all()


def test_a_recorded_recipe_names_its_format():
    from latbench.export.coreml_quant import coreml_recipe
    from latbench.export.formats import format_of_recipe
    from latbench.export.tflite_quant import litert_recipe

    recipe = QuantRecipe()
    assert format_of_recipe(litert_recipe(recipe)) == "tflite"
    assert format_of_recipe(coreml_recipe(recipe)) == "coreml"
    assert format_of_recipe(recipe.to_dict()) == "onnx"
    assert format_of_recipe(None) is None and format_of_recipe({"method": "something else"}) is None
