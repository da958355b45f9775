"""int8 LiteRT: ai-edge-quantizer's static full-integer quantization of the fp32 .tflite.

The fp32 graph litert-torch writes (latbench.export.tflite) is quantized by ai-edge-quantizer
0.10 over every supported op: int8 weights, per channel unless the recipe says otherwise,
symmetric; int8 activations, per tensor, **symmetric** (zero point 0), ranges by min/max over the
calibration batches. The quantizer's own `add_static_config` makes int8 activations asymmetric;
XNNPACK (LiteRT's CPU delegate) takes an int8 BATCH_MATMUL only when its operands have zero point
0, so with asymmetric ranges the attention's two batched matmuls ran on LiteRT's built-in kernels,
except where calibration happened to land on zero point 0. Both happened in one table: the
isolated `mhsa-r224-s3-c96` (its value tensor at zero point 0) timed 0.73 ms, the c120-c192 blocks
1.41-1.47 ms, and inside whole models the c96 block ran like the others (zero points there follow
the model's activations), so the validation of the default-space int8 table missed subnets with
many c96 attention blocks by 14-29 %. Symmetric activations put every int8 BATCH_MATMUL on XNNPACK
whatever the ranges (mhsa-s3-c120: 1.24 -> 0.49 ms, c96 0.65 -> 0.50 ms, one thread on this host)
at unchanged parity (cosine 0.99960 -> 0.99958), and it is what an app shipping the model would
want. The calibration batches are the ONNX recipe's
(latbench.export.quantize.calibration_batches: the same seeded, recorded standard-normal inputs),
so an int8 ONNX and an int8 LiteRT artifact of one item saw the same data.

The graph's input and output stay float32 (the recipe marks the INPUT and OUTPUT pseudo-ops
"no_quantize"): the quantizer then puts one QUANTIZE after the input and one DEQUANTIZE before
the output, and runners feed an int8 artifact the same tensors as the fp32 one. An isolated
block thus pays one quantize/dequantize pair per run, a whole model one in all. Ops the quantizer
does not take (the decomposed softmax's EXP, for one) stay float between a DEQUANTIZE and a
QUANTIZE inside the graph: that is how the model ships, so it is what is timed.

An op-less graph (the fp32 "empty" model: litert-torch folds its x * 1) has nothing for the
quantizer to calibrate. Its int8 form is the pair every isolated int8 block pays beyond its own
ops: QUANTIZE then DEQUANTIZE at the input's shape, with the input range from the same calibration
batches (`qdq_pair`); subtracting it from a block's time (latbench.tables.overhead) removes the
pair that the whole model pays only once.

Parity (the metric of latbench.export.quantize: cosine similarity and relative L2 error against the
fp32 PyTorch output). Measured with the recipe's earlier asymmetric activations, ai-edge-quantizer
0.10.0, ai-edge-litert 2.3.0, XNNPACK on x86, the export's validation input and calibration seed 0
(symmetric activations moved an attention block from 0.99960 to 0.99958 and L from 0.832 / 0.56
to 0.876 / 0.50) on 44 blocks of the
default space (every stem and head, 8 of each other kind drawn at random, 6 empty models; the
mhsa figures again with DIV in float, unchanged to the digits shown):

    block kind (blocks)       cosine              rel. L2 error
    stem (2)                  0.99958-0.99960     0.028-0.029
    ffn (8)                   0.99949-0.99977     0.022-0.032
    mhsa (8)                  0.99863-0.99969     0.025-0.053
    embed (8)                 0.99987-0.99988     0.015-0.016
    attndown (8)              0.99939-0.99950     0.032-0.035
    head (4)                  0.99783-0.99971     0.025-0.068   (c176 the worst)
    empty (6)                 0.99995-0.99996     0.009-0.010

The heads and attention blocks lose more than onnxruntime's (whose worst block is 0.99939): the
head's global mean and the attention's batched matmuls are int8 per tensor here. Blocks are held
to cosine >= 0.993 and relative error <= 0.14 (about three times the worst 1 - cosine and twice
the worst error seen, the rule of the ONNX thresholds); a lost op (a ReLU too many) gives a cosine
near 0.7.

Whole models accumulate every block's error, with latbench's random (not trained) weights more
so, and more than under onnxruntime (seed 0, DIV in float): EfficientFormerV2 S0 0.972 / 0.25,
S1 0.982 / 0.21, S2 0.977 / 0.21, L 0.832 / 0.56 (onnxruntime: L 0.984 / 0.22), MobileNetV2-1.0
0.99992 / 0.013. Whole models are therefore held
to cosine >= 0.75 and relative error <= 0.8: L with some room, and a graph that computes
something else (cosine near 0, relative error near 1.4 for unrelated outputs) still fails.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from latbench.export.quantize import QuantRecipe, calibration_batches, minmax_recipe

#: Thresholds of the int8 LiteRT parity check, by what is exported (see the module docstring).
LITERT_INT8_PARITY = {
    "block": {"min_cosine": 0.993, "max_rel_error": 0.14},
    "model": {"min_cosine": 0.75, "max_rel_error": 0.8},
}
#: Ops kept in float32 (between a DEQUANTIZE and a QUANTIZE). DIV: TFLite's int8 DIV refuses to run
#: when a divisor element equals its zero point (tflite/kernels/div.cc: "data[i] != zero_point"),
#: which the decomposed softmax's row sums hit in EfficientFormerV2-L (node 634, seed 0): the
#: interpreter fails at the first invoke. A divisor range from calibration cannot rule that out.
FLOAT_OPS = ("DIV",)
#: What a LiteRT int8 artifact's recipe records beside the seed and the number of batches.
METHOD = "ai_edge_quantizer static int8 (min_max_uniform_quantize)"


def litert_recipe(recipe: QuantRecipe) -> dict[str, Any]:
    """The recorded (and hashed) recipe of an int8 .tflite made with `recipe`'s calibration.

    TFLite's int8 kernels take int8 activations only, so the ONNX recipe's activation type is not
    used (recorded as int8); other calibration methods than min/max are refused rather than
    silently replaced."""
    from importlib import metadata

    return {**minmax_recipe(recipe, "LiteRT", METHOD, quantizer_version=metadata.version("ai-edge-quantizer")),
            "activation_type": "int8", "activation_granularity": "per tensor, symmetric (zero point 0)",
            "io": "float32 (QUANTIZE after the input, DEQUANTIZE before the output)", "float_ops": list(FLOAT_OPS)}


def quantize_tflite(src: Path, dst: Path, shape: tuple[int, ...], recipe: QuantRecipe) -> float:
    """Write the full-integer int8 graph of the fp32 .tflite `src` to `dst`; returns the seconds it took."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    from latbench.export.common import captured_output
    from latbench.export.tflite import fd_silenced

    with fd_silenced():
        interp = Interpreter(model_path=str(src))
    signatures = interp.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(f"expected one signature, found {sorted(signatures)}")
    key, sig = next(iter(signatures.items()))
    (input_name,) = sig["inputs"]
    batches = calibration_batches(input_name, shape, recipe)

    t0 = time.perf_counter()
    if not _has_ops(src):
        dst.write_bytes(qdq_pair(src.read_bytes(), [b[input_name] for b in batches]))
        return time.perf_counter() - t0
    granularity = (qtyping.QuantGranularity.CHANNELWISE if recipe.per_channel
                   else qtyping.QuantGranularity.TENSORWISE)
    q = quantizer.Quantizer(str(src))
    # add_static_config, with symmetric int8 activations (see the module docstring).
    static = qtyping.OpQuantizationConfig(
        activation_tensor_config=qtyping.TensorQuantizationConfig(num_bits=8, symmetric=True),
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=8, symmetric=True, granularity=granularity),
        compute_precision=qtyping.ComputePrecision.INTEGER, explicit_dequantize=False)
    q._recipe_manager.add_quantization_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, op_config=static)
    # float32 in and out: the I/O pseudo-ops stay unquantized (see the module docstring). There is
    # no public Quantizer method for a no-quantize entry; RecipeManager's is public.
    # FLOAT_OPS likewise: their entries come later, so they win over the static one.
    for name in ("INPUT", "OUTPUT", *FLOAT_OPS):
        q._recipe_manager.add_quantization_config(".*", qtyping.TFLOperationName(name),
                                                  algorithm_key=AlgorithmName.NO_QUANTIZE)
    # The calibrator prints a progress bar and a debugging-mode warning from its interpreters.
    with captured_output(), fd_silenced():
        calibration = q.calibrate({key: batches}, num_threads=1)
        result = q.quantize(calibration, enable_progress_report=False)
    dst.write_bytes(bytes(result.quantized_model))
    return time.perf_counter() - t0


def _has_ops(path: Path) -> bool:
    from latbench.export.tflite import primary_subgraph_ops

    return primary_subgraph_ops(path) > 0


def qdq_pair(fp32_model: bytes, batches: list[Any]) -> bytes:
    """The op-less fp32 graph `fp32_model` (input tensor = output tensor) as input -> QUANTIZE (int8,
    per tensor, symmetric min/max over `batches`, as the recipe quantizes) -> DEQUANTIZE -> output."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(fp32_model, 0))
    sg = model.subgraphs[0]
    if sg.operators or len(sg.inputs) != 1 or list(sg.outputs) != list(sg.inputs):
        raise ValueError("qdq_pair takes an op-less graph whose output is its input")
    src = sg.tensors[sg.inputs[0]]
    bound = max(float(np.max(np.abs(b))) for b in batches)
    scale, zero_point = bound / 127.0 or 1.0, 0

    def tensor(name: bytes, dtype: int, quant: Any = None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type, t.quantization = name, list(src.shape), dtype, quant
        buf = s.BufferT()
        model.buffers.append(buf)
        t.buffer = len(model.buffers) - 1
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def opcode(code: int) -> int:
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        model.operatorCodes.append(oc)
        return len(model.operatorCodes) - 1

    def op(code: int, inputs: list[int], outputs: list[int]) -> Any:
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = opcode(code), inputs, outputs
        return o

    qp = s.QuantizationParametersT()
    qp.scale, qp.zeroPoint = [scale], [zero_point]
    q_out = tensor(b"input_quantized", s.TensorType.INT8, qp)
    out = tensor(b"output_dequantized", s.TensorType.FLOAT32)
    sg.operators = [op(s.BuiltinOperator.QUANTIZE, [sg.inputs[0]], [q_out]),
                    op(s.BuiltinOperator.DEQUANTIZE, [q_out], [out])]
    sg.outputs = [out]
    for sig in model.signatureDefs or []:
        for m in sig.outputs:
            m.tensorIndex = out
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

