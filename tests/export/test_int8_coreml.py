"""int8 Core ML (W8A8) on any OS: every block kind quantized in PyTorch by coremltools'
LinearQuantizer, converted to an ML Program with quantized activations and int8 weights; the
recipe in the manifest and the cache key, the deployment target raised to iOS17, the precision
read back from the real package (real conversions; Core ML prediction only on macOS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _support import assert_int8_block_record, export_every_kind, manifest_recipes, one_block_per_kind

from latbench.core.errors import UsageError
from latbench.export import export_items, export_one
from latbench.export.quantize import INT8_PARITY, QuantRecipe

pytest.importorskip("coremltools")

KINDS = one_block_per_kind()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return export_every_kind("coreml", tmp_path_factory.mktemp("int8-coreml"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_block_kind_converts_to_w8a8(report, kind):
    from latbench.export.coreml_quant import coreml_recipe

    rec = report[(KINDS[kind].key, "coreml")]
    assert_int8_block_record(rec, KINDS[kind].key, INT8_PARITY["block"])
    ops = rec.validation["mil_ops"]
    assert ops.get("quantize", 0) >= 1 and ops.get("dequantize", 0) >= 1  # int8 activations
    if kind != "empty":
        assert ops.get("constexpr_affine_dequantize", 0) >= 1  # int8 weights
    assert rec.deployment_target == "iOS17"  # the default iOS16 raised: quantized activations need iOS17
    assert rec.quantization == coreml_recipe(QuantRecipe())


def test_the_package_says_it_is_int8(report):
    import coremltools as ct

    from device_runners.coreml_common import spec_precision

    w8a8 = ct.models.MLModel(report[(KINDS["ffn"].key, "coreml")].path, skip_model_load=True)
    assert spec_precision(w8a8) == "int8"
    fp16 = ct.models.MLModel(export_one(KINDS["ffn"], "coreml", Path(report.manifest_path).parent).path,
                             skip_model_load=True)
    assert spec_precision(fp16) is None


def test_manifest_and_cache_key_hold_the_coreml_recipe(report, tmp_path):
    recipes = manifest_recipes(report, "coreml")
    assert len(recipes) == len(KINDS)
    assert all(q["method"].startswith("coremltools.optimize.torch") and q["coremltools_version"] for q in recipes)
    item = KINDS["embed"]
    base = export_one(item, "coreml", tmp_path, precision="int8")
    seed = export_one(item, "coreml", tmp_path, precision="int8", quantization={"calibration_seed": 1})
    assert base.status == seed.status == "exported" and base.content_hash != seed.content_hash
    assert export_one(item, "coreml", tmp_path, precision="int8").status == "cached"


def test_coreml_int8_targets_and_recipes_it_cannot_make():
    from latbench.export.coreml_quant import min_target

    assert [min_target(t) for t in ("iOS16", "iOS18", "macOS13", "macOS15", "watchOS9")] == \
        ["iOS17", "iOS18", "macOS14", "macOS15", "watchOS10"]
    with pytest.raises(UsageError, match="^int8 Core ML calibrates by minmax only, not 'percentile'$"):
        export_items([KINDS["empty"]], "coreml", precision="int8", quantization={"calibrate_method": "percentile"})
