"""Fixtures for the device runner tests: tiny ONNX models, TFLite conversions, the real adb server,
fake phones, a fake benchmark_model."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

FAKES = Path(__file__).resolve().parents[1] / "fakes"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))

from phone_fixtures import adb_server, make_phone  # noqa: E402,F401 - fixtures shared with the farm tests


def make_conv_model(path: Path, *, channels: int = 8, size: int = 32, depth: int = 1, fp16: bool = False) -> Path:
    """A small conv net (Conv-Relu x depth, global pool) saved as ONNX; IR 8 so onnxruntime loads it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dt = np.float16 if fp16 else np.float32
    et = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    nodes, inits, prev, cin = [], [], "x", 3
    for i in range(depth):
        inits.append(numpy_helper.from_array((rng.standard_normal((channels, cin, 3, 3)) * 0.1).astype(dt), f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(channels, dt), f"b{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["y"], name="pool"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", et, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", et, [1, channels, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "small": make_conv_model(d / "small.onnx"),
        "medium": make_conv_model(d / "medium.onnx", channels=16, depth=3),
        "fp16": make_conv_model(d / "half.onnx", fp16=True),
    }


LITERT_MISSING = [m for m in ("litert_torch", "ai_edge_litert") if importlib.util.find_spec(m) is None]
needs_litert = pytest.mark.skipif(bool(LITERT_MISSING), reason=f"{', '.join(LITERT_MISSING)} not importable "
                                  "(pip install 'latbench[litert]')")


@pytest.fixture(scope="session")
def tflite_models() -> dict[str, Path]:
    """Two real conversions (a small FFN, the smallest attention downsampling), from the test export
    cache when an earlier run made them: {"ffn": path, "attndown": path}."""
    if LITERT_MISSING:
        pytest.skip(f"{', '.join(LITERT_MISSING)} not importable (pip install 'latbench[litert]')")
    from latbench.blocks.configs import AttnDownConfig, FFNConfig
    from latbench.export import export_items

    items = {"ffn": FFNConfig(224, 1, 32, 2), "attndown": AttnDownConfig(224, 120, 176)}
    records = {r.key: r for r in export_items(list(items.values()), "tflite", None, jobs=1, progress=False)}
    for r in records.values():
        assert r.ok, r.error
    return {name: Path(records[cfg.key].path) for name, cfg in items.items()}


@pytest.fixture
def benchmark_model_bin(tmp_path) -> Path:
    """A host executable that behaves as benchmark_model (tests/fakes/fake_benchmark_model.py);
    $FAKE_BENCHMARK_MODEL_BEHAVIOUR (JSON) makes it misbehave."""
    path = tmp_path / "benchmark_model"
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKES / 'fake_benchmark_model.py'))} "
                    '"$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def int8_models() -> dict[str, Path]:
    """A small FFN quantized to int8: {"onnx": QDQ .onnx, "tflite": full-integer .tflite (when the
    LiteRT packages are there)}, from the test export cache when an earlier run made them."""
    from latbench.blocks.configs import FFNConfig
    from latbench.export import export_items
    from latbench.export.tflite import INT8_MODULES, missing_modules

    fmts = "onnx" if missing_modules(INT8_MODULES) else "onnx,tflite"
    records = export_items([FFNConfig(224, 1, 32, 2)], fmts, None, precision="int8", jobs=1, progress=False)
    for r in records:
        assert r.ok, r.error
    return {r.format: Path(r.path) for r in records}
