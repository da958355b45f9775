"""What an exported artifact takes as input, read from the file: the same facts for every runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.core.errors import UsageError
from latbench.core.text import first_line

_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 9: "bool", 2: "uint8", 3: "int8"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


def concrete_shape(shape: Any) -> tuple[int, ...]:
    # Free (symbolic or unknown) dimensions are taken as 1, as onnxruntime_perf_test -I does.
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


def onnx_inputs(path: Path) -> list[TensorSpec]:
    """Graph inputs (excluding initializers) of an ONNX file, read without the weights' data.
    UsageError when the file is not a readable ONNX model."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UsageError(f"{Path(path).name} is not a readable ONNX model: {first_line(e)}") from e
    if not model.graph.node:  # an empty file parses as an empty ModelProto
        raise UsageError(f"{Path(path).name} is not a readable ONNX model: it holds no graph")
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(TensorSpec(vi.name, concrete_shape(dims), _ONNX_DTYPES.get(tt.elem_type, f"onnx:{tt.elem_type}")))
    return specs
