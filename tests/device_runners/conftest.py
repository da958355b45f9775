"""Fixtures for the device runner tests: tiny ONNX models, the real adb server, fake phones."""

from __future__ import annotations

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
