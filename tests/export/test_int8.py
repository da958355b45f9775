"""int8 as a precision: onnxruntime's static QDQ quantization of every block kind, its parity
metric, the recipe in the cache key, the cpu runner measuring int8, the other runners refusing
it, and a tiny int8 table beside an fp32 one (real exports, real onnxruntime; small blocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _support import TINY_BUILD, assert_int8_block_record, manifest_recipes, one_block_per_kind

from latbench.core.errors import ExportError, UsageError
from latbench.export import export_items, export_one
from latbench.export.quantize import INT8_PARITY, QuantRecipe, quantized_parity
from latbench.export.tflite import INT8_MODULES
from latbench.measuring.measurement import SamplingPolicy

KINDS = one_block_per_kind()


@pytest.fixture(scope="module")
def int8_report(tmp_path_factory):
    return export_items(list(KINDS.values()), "onnx", tmp_path_factory.mktemp("int8"), precision="int8")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_block_kind_quantizes_and_passes_parity(int8_report, kind):
    import onnx

    rec = int8_report[(KINDS[kind].key, "onnx")]
    assert_int8_block_record(rec, KINDS[kind].key, INT8_PARITY["block"])
    model = onnx.load(rec.path)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in, as fp32 artifacts
    if kind not in ("empty",):  # blocks with weights keep them as int8 (per channel) in the file
        assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    assert rec.quantization == QuantRecipe().to_dict()


def test_manifest_records_the_recipe(int8_report):
    recipes = manifest_recipes(int8_report, "onnx")
    assert len(recipes) == len(KINDS)
    for q in recipes:
        assert q["calibration_seed"] == 0 and q["calibration_batches"] == 8 and q["calibrate_method"] == "minmax"
        assert q["per_channel"] is True and q["quant_format"] == "QDQ" and q["activation_type"] == "uint8"


def test_parity_metric_fails_a_wrong_graph_and_passes_quantization_noise():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 64, 14, 14))
    noisy = ref + 0.02 * rng.standard_normal(ref.shape)  # quantization-sized error
    assert quantized_parity([ref], [noisy], "ffn")["status"] == "passed"
    wrong = quantized_parity([ref], [np.maximum(ref, 0)], "ffn")  # a lost op (a ReLU too many)
    assert wrong["status"] == "failed" and wrong["cosine"] < INT8_PARITY["block"]["min_cosine"]
    assert quantized_parity([ref], [-ref], "model")["status"] == "failed"
    assert quantized_parity([ref], [ref * np.nan], "ffn")["status"] == "failed"


def test_parity_failure_is_loud_per_artifact(tmp_path, monkeypatch):
    from latbench.export import quantize
    from latbench.measuring.session import export_artifacts

    monkeypatch.setitem(quantize.INT8_PARITY, "block", {"min_cosine": 0.999999, "max_rel_error": 1e-4})
    item = KINDS["empty"]
    rec = export_one(item, "onnx", tmp_path, precision="int8", force=True)
    assert rec.status == "failed"
    assert rec.error.startswith("int8 parity check failed: cosine 0.99") and "\n" not in rec.error
    assert "needs >= 0.999999" in rec.error
    monkeypatch.setenv("LATBENCH_CACHE", str(tmp_path))
    with pytest.raises(ExportError, match=rf"first {item.key}: int8 parity check failed: cosine 0\.99"):
        export_artifacts([item], "onnx", 1, "int8")


def _litert_missing() -> bool:
    from latbench.export.tflite import missing_modules

    return bool(missing_modules(INT8_MODULES))


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("tflite", marks=pytest.mark.skipif(
    _litert_missing(), reason="int8 LiteRT needs litert-torch, ai-edge-litert and ai-edge-quantizer"))])
def test_the_recipe_is_in_the_cache_key(tmp_path, fmt):
    item = KINDS["ffn"]
    base = export_one(item, fmt, tmp_path, precision="int8")
    assert base.status == "exported"
    assert export_one(item, fmt, tmp_path, precision="int8").status == "cached"
    seed = export_one(item, fmt, tmp_path, precision="int8", quantization={"calibration_seed": 1})
    batches = export_one(item, fmt, tmp_path, precision="int8", quantization=QuantRecipe(calibration_batches=2))
    assert seed.status == batches.status == "exported"  # a changed recipe exports again
    assert len({base.content_hash, seed.content_hash, batches.content_hash}) == 3
    assert len({base.path, seed.path, batches.path}) == 3
    assert seed.sha256 != base.sha256  # other calibration data, other scales
    assert seed.quantization["calibration_seed"] == 1 and batches.quantization["calibration_batches"] == 2
    again = export_one(item, fmt, tmp_path, precision="int8", quantization={"calibration_seed": 1})
    assert again.status == "cached" and again.content_hash == seed.content_hash
    # fp32 artifacts carry no recipe, and a recipe does not touch their hash.
    fp32 = export_one(item, fmt, tmp_path)
    assert fp32.quantization is None
    assert export_one(item, fmt, tmp_path, quantization={"calibration_seed": 5}).content_hash == fp32.content_hash


def test_bad_recipes_and_formats_are_one_line():
    with pytest.raises(UsageError, match="calibration batches must be >= 1"):
        QuantRecipe(calibration_batches=0)
    with pytest.raises(UsageError, match="unknown calibration method"):
        QuantRecipe.from_value({"calibrate_method": "guess"})
    with pytest.raises(UsageError, match="the tflite format is fp32 or int8 only, not fp16"):
        export_items([KINDS["empty"]], "tflite", precision="fp16")


def test_cpu_runner_measures_int8_and_records_precision(int8_report):
    from device_runners.cpu import CpuRunner

    rec = int8_report[(KINDS["ffn"].key, "onnx")]
    with CpuRunner() as runner:
        m = runner.measure(runner.prepare(Path(rec.path)), SamplingPolicy.fixed(5, 2), profile=True)
    assert m.n == 5 and all(s > 0 for s in m.samples_ms)
    assert m.provenance["precision"] == "int8" and m.provenance["input_dtype"] == "float32"
    # The integer kernels really ran: onnxruntime fuses the QDQ pairs into QLinear* / integer ops.
    op_types = {op.op_type for op in m.per_op}
    assert any(t.startswith("QLinear") or t in ("QuantizeLinear", "DequantizeLinear", "MatMulInteger",
                                                  "ConvInteger") for t in op_types), op_types


def test_every_device_kind_runs_int8_and_one_without_refuses_in_one_line(int8_report):
    from scripted_device import ScriptedRunner

    from device_runners import runner_classes

    # Issue 23: every device kind measures int8 artifacts (each records the graph's precision).
    kinds = {cls.kind for cls in runner_classes()}
    assert {cls.kind for cls in runner_classes() if "int8" in cls.precisions} == kinds
    for cls in runner_classes():
        cls.check_precision("int8")  # accepted up front
    # A device without int8 (the scripted one) refuses, naming the devices that run it: in a
    # session before exporting anything ...
    from latbench.measuring.session import MeasuringSession

    runner = ScriptedRunner(lambda key: 1.0)
    with pytest.raises(UsageError) as err:
        MeasuringSession(runner, precision="int8")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("scripted devices cannot run int8 artifacts (they run fp32, fp16)")
    assert msg.endswith(f"int8 runs on {ScriptedRunner.devices_running('int8')}")
    assert all(kind in msg for kind in kinds)
    # ... and a quantized file handed over directly is refused when prepared.
    with pytest.raises(UsageError, match=r"cannot run int8 artifacts \(.*-int8-.*\.onnx is quantized\)"):
        runner.prepare(Path(int8_report[(KINDS["ffn"].key, "onnx")].path))


def test_int8_tables_have_their_own_directory(tmp_path, monkeypatch):
    from latbench import api

    monkeypatch.chdir(tmp_path)
    [int8] = api.plan_builds("cpu", models=["efficientformerv2_s0"], dtype="int8")
    [fp32] = api.plan_builds("cpu", models=["efficientformerv2_s0"], dtype="fp32")
    [plain] = api.plan_builds("cpu", models=["efficientformerv2_s0"])
    assert str(int8.out) == "tables/cpu/efficientformerv2-r224-int8"
    assert str(fp32.out) == str(plain.out) == "tables/cpu/efficientformerv2-r224"


def test_tiny_int8_table_beside_fp32_and_their_diff(tmp_path):
    """Three blocks (the anchors themselves) measured on the cpu runner in int8 and in fp32."""
    from device_runners.cpu import CpuRunner
    from latbench import api
    from latbench.tables.build import BuildSettings, TableBuilder, default_anchors

    configs = default_anchors(224)
    settings = TINY_BUILD
    tables = {}
    for dtype in ("int8", "fp32"):
        with CpuRunner() as runner:
            res = TableBuilder(runner, tmp_path / dtype, BuildSettings(precision=dtype, **settings)).build(configs)
        tables[dtype] = res.table
    t8 = tables["int8"]
    assert t8.meta["precision"] == "int8" and t8.meta["device"]["precision"] == "int8"
    assert t8.meta["quantization"]["calibration_batches"] == 8 and t8.meta["settings"]["precision"] == "int8"
    assert tables["fp32"].meta["precision"] == "fp32" and tables["fp32"].meta["quantization"] is None
    saved = json.loads((tmp_path / "int8" / "meta.json").read_text())
    assert saved["precision"] == "int8"
    assert {c.key for c in configs} <= set(t8.blocks["key"])
    assert (t8.blocks["latency_ms"] > 0).all()
    # The two tables measured different artifacts of the same blocks.
    by_key = {d: dict(zip(t.blocks["key"], t.blocks["content_hash"])) for d, t in tables.items()}
    assert all(by_key["int8"][c.key] != by_key["fp32"][c.key] for c in configs)

    diff = api.diff_tables(tmp_path / "fp32", tmp_path / "int8")
    assert diff["common"] == len(t8.blocks) and not diff["only_a"] and not diff["only_b"]
    assert diff["median_ratio"] > 0
    assert "precision: 'fp32' -> 'int8'" in diff["provenance_diff"]

    # An fp32 build never lands in the int8 table (nor the other way round).
    with CpuRunner() as runner, pytest.raises(UsageError, match="precision: 'int8' -> 'fp32'"):
        TableBuilder(runner, tmp_path / "int8", BuildSettings(precision="fp32", **settings)).build(configs)
