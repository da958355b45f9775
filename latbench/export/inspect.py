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


#: Node types only a quantized ONNX graph holds (QDQ pairs, or the integer operators).
_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                        "MatMulInteger", "DynamicQuantizeLinear"})


def onnx_precision(path: Path) -> str:
    """The precision an ONNX file computes in, read from its graph (not its inputs: latbench's
    fp16 and int8 graphs take fp32 inputs): "int8" when it holds quantization nodes, "fp16" when
    its weights are float16, else "fp32". UsageError when the file is not a readable ONNX model."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UsageError(f"{Path(path).name} is not a readable ONNX model: {first_line(e)}") from e
    if any(n.op_type in _QUANT_OPS for n in model.graph.node):
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


#: TFLite schema TensorType codes -> numpy dtype names (the ones vision models use).
_TFLITE_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8",
                  10: "float64"}


def tflite_inputs(path: Path) -> list[TensorSpec]:
    """Inputs of subgraph 0 of a .tflite flatbuffer, read without a runtime. UsageError when the
    file is not a readable TFLite model (or the LiteRT extra that reads it is missing)."""
    name = Path(path).name
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise UsageError(f"reading {name} needs ai-edge-litert, which is not installed: "
                         "pip install 'latbench[litert]'") from None
    try:
        buf = Path(path).read_bytes()
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise ValueError("no TFL3 file identifier")
        model = schema.Model.GetRootAs(buf, 0)
        if not model.SubgraphsLength():
            raise ValueError("it holds no subgraph")
        sg = model.Subgraphs(0)
        specs = []
        for i in range(sg.InputsLength()):
            t = sg.Tensors(sg.Inputs(i))
            dims = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            dtype = _TFLITE_DTYPES.get(int(t.Type()), f"tflite:{t.Type()}")
            specs.append(TensorSpec((t.Name() or b"").decode(errors="replace"), concrete_shape(dims), dtype))
    except Exception as e:
        raise UsageError(f"{name} is not a readable TFLite model: {first_line(e)}") from e
    return specs


def tflite_precision(path: Path) -> str:
    """The precision a .tflite computes in, read from its graph (latbench's int8 graphs take fp32
    inputs): "int8" when it holds a QUANTIZE op or int8 tensors, "fp16" when its tensors are
    float16, else "fp32". UsageError when the file is not a readable TFLite model."""
    tflite_inputs(path)  # the readable-file check and its one-line error
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        if max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode())) == schema.BuiltinOperator.QUANTIZE:
            return "int8"
    types = {int(sg.Tensors(t).Type()) for sg in (model.Subgraphs(g) for g in range(model.SubgraphsLength()))
             for t in range(sg.TensorsLength())}
    if schema.TensorType.INT8 in types:
        return "int8"
    return "fp16" if schema.TensorType.FLOAT16 in types else "fp32"


#: artifact suffix -> how its precision is read from the file (formats whose files say it).
FILE_PRECISION = {".onnx": onnx_precision, ".tflite": tflite_precision}


def file_precision(path: Path) -> str | None:
    """The precision an artifact file computes in, or None when its format does not say."""
    read = FILE_PRECISION.get(Path(path).suffix.lower())
    return read(path) if read else None
