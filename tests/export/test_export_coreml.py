"""Core ML export: ML Program packages for one block of every kind and for S0, reloaded and inventoried."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from latbench.blocks.candidates import resolve_candidate
from latbench.blocks.configs import EmbedConfig, FFNConfig, space_blocks
from latbench.core.hashing import tree_sha256
from latbench.export import export_items, export_one
from latbench.export.coreml import import_coremltools
from latbench.space import SearchSpace


def _one_per_kind() -> list:
    seen: dict[str, object] = {}
    for block in space_blocks(SearchSpace.default(), 224):
        seen.setdefault(block.kind, block)
    return list(seen.values())


def _check_package(rec, item) -> dict:
    ct = import_coremltools()
    assert rec.ok, rec.error
    assert rec.precision == "fp16" and rec.deployment_target == "iOS16"  # Core ML defaults
    path = Path(rec.path)
    assert path.suffix == ".mlpackage" and path.is_dir()
    assert rec.sha256 == tree_sha256(path)
    assert rec.input_names == ["input"] and rec.input_shapes == [list(item.input_shape)]
    assert rec.output_names == ["output"]
    v = rec.validation
    assert v["reload"] == "passed" and v["deployment_target"] == "iOS16"
    assert v["mil_ops"] and all(isinstance(n, int) and n > 0 for n in v["mil_ops"].values())
    if sys.platform != "darwin":
        assert v["parity"]["status"] == "skipped" and "macOS" in v["parity"]["reason"]
    else:
        assert v["parity"]["status"] == "passed"
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion >= 7  # iOS16
    return v["mil_ops"]


# The op each kind cannot do without (what the device must support for it).
KIND_OPS = {"stem": "conv", "ffn": "gelu", "mhsa": "softmax", "embed": "conv", "attndown": "matmul", "head": "linear"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KIND_OPS))
def test_one_block_of_every_kind_converts_and_reloads(tmp_path: Path, kind: str) -> None:
    # In this process: pytest-xdist already uses the cores, and worker start-up (torch +
    # coremltools imports) would cost more than the conversion.
    block = next(b for b in _one_per_kind() if b.kind == kind)
    rec = export_one(block, "coreml", tmp_path)
    ops = _check_package(rec, block)
    assert KIND_OPS[kind] in ops


def test_the_space_has_exactly_these_kinds() -> None:
    assert {b.kind for b in _one_per_kind()} == set(KIND_OPS)


@pytest.mark.slow
def test_s0_converts_and_reloads(tmp_path: Path) -> None:
    s0 = resolve_candidate("efficientformerv2_s0")
    rec = export_items([s0], ("coreml",), tmp_path, jobs=1, progress=False)[(s0.key, "coreml")]
    ops = _check_package(rec, s0)
    assert ops["conv"] > 50 and ops["softmax"] == 5  # 4 attention blocks + attention downsampling
    assert rec.output_shapes == [[1, 1000]]


@pytest.mark.slow
def test_fp32_and_deployment_target_are_configurable(tmp_path: Path) -> None:
    config = FFNConfig(224, 4, 176, 2)
    fp16 = export_one(config, "coreml", tmp_path).raise_for_status()
    fp32 = export_one(config, "coreml", tmp_path, precision="fp32", deployment_target="ios17").raise_for_status()
    assert fp32.precision == "fp32" and fp32.deployment_target == "iOS17"
    assert fp32.validation["compute_precision"] == "fp32"
    assert fp32.path != fp16.path and fp32.content_hash != fp16.content_hash
    assert fp32.size > fp16.size  # fp32 weights take twice the space
    ct = import_coremltools()
    assert ct.models.MLModel(fp32.path, skip_model_load=True).get_spec().specificationVersion >= 8
    # I/O has the program's precision, so no cast sits at the block boundary.
    assert fp16.validation["io_dtypes"] == {"input": "float16", "output": "float16"}
    assert fp32.validation["io_dtypes"] == {"input": "float32", "output": "float32"}
    assert "cast" not in fp16.validation["mil_ops"] and "cast" not in fp32.validation["mil_ops"]


def test_macos_predict_parity_path_is_wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The macOS-only parity step, with Core ML's predict replaced by the PyTorch module itself
    (fed the fp16-rounded input it would receive): checks names, dtypes and the comparison."""
    import torch

    from latbench.export import coreml as coreml_mod
    from latbench.export.common import prepared_module

    block = EmbedConfig(224, 2, 48, 96)
    module = prepared_module(block)
    ct = import_coremltools()
    real_model = ct.models.MLModel

    class FakeLoaded:
        def __init__(self, path: str, **kw) -> None:
            self.kw = kw

        def predict(self, feed: dict) -> dict:
            (x,) = feed.values()
            assert x.dtype.name == "float16"
            with torch.no_grad():
                return {"output": module(torch.from_numpy(x.astype("float32"))).numpy().astype("float16")}

    def fake_mlmodel(path, *args, **kw):
        return real_model(path, *args, **kw) if kw.get("skip_model_load") else FakeLoaded(path, **kw)

    monkeypatch.setattr(coreml_mod, "is_macos", lambda: True)
    monkeypatch.setattr(ct.models, "MLModel", fake_mlmodel)
    rec = export_one(block, "coreml", tmp_path)
    assert rec.ok, rec.error
    parity = rec.validation["parity"]
    assert parity["status"] == "passed" and parity["runtime"] == "Core ML (CPU_ONLY)"
    assert 0 < parity["max_abs_diff"] <= parity["tolerance"]

    def unloadable(path, *args, **kw):
        if kw.get("skip_model_load"):
            return real_model(path, *args, **kw)
        raise RuntimeError("Error compiling model: unsupported deployment target")

    monkeypatch.setattr(ct.models, "MLModel", unloadable)
    rec = export_one(block, "coreml", tmp_path / "b")
    assert rec.ok and rec.validation["parity"]["status"] == "skipped"
    assert "this Mac cannot load the package" in rec.validation["parity"]["reason"]


def test_no_temporary_packages_are_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where coremltools puts its working copy
    rec = export_one(EmbedConfig(224, 1, 40, 64), "coreml", tmp_path / "out")
    assert rec.ok, rec.error
    assert not list(scratch.glob("*.mlpackage"))  # (torch may keep its own caches there)
