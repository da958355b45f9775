"""ONNX export: static batch-1 graphs at opset 17, checked and compared with PyTorch in onnxruntime.

Exporter choice, measured with `benchmarks/bench_export.py --compare-exporters` (torch 2.13 CPU,
2 cores, one thread, median of 3 exports of the same prepared block, first calls listed apart):

    block                         TorchScript (dynamo=False)   dynamo (torch.export based)
    first call in a process              0.12 s                       3.33 s
    ffn-r224-s1-c32-e4                   0.019 s                      0.68 s   (x35)
    mhsa-r224-s3-c96                     0.044 s                      1.22 s   (x28)
    attndown-r224-s3-c144-o288           0.046 s                      1.35 s   (x29)
    head-r224-c176                       0.013 s                      0.52 s   (x40)

The TorchScript exporter is about 30x faster and exports every block of the space and every named
model (EfficientFormerV2 S0/S1/S2/L, MobileNetV2, MobileViT XXS/XS/S) with parity, so it is the
default. It is deprecated upstream; `exporter="dynamo"` selects the torch.export-based one
(opset >= 18) for when it goes away. The module is traced first (`torch.jit.trace`) and the
trace exported, which is what the legacy exporter does internally anyway, so the time splits
into tracing and converting.

Tracing and validation use different fixed inputs: Python control flow that depends on tensor
values gets frozen by tracing, and a second input is what exposes it.

fp16: the fp32 graph is converted with onnxruntime's float16 converter (the same code as
onnxconverter-common) keeping fp32 inputs/outputs, so callers feed the same tensors; weights and
activations are fp16 inside. Parity is then checked against the fp32 PyTorch reference with the
fp16 tolerance (1e-2 x max(1, max |reference|)). onnxruntime's CPU provider runs ops that lack an
fp16 kernel in fp32 between casts, so on this host the check covers the rounding of weights and
intermediate tensors, not fp16 arithmetic inside every kernel; a phone's fp16 kernels differ more.

int8: the fp32 graph (exported as above, to a temp file beside the artifact) is quantized by
onnxruntime's static QDQ quantizer with the recipe given (latbench.export.quantize: seeded
calibration batches, per-channel int8 weights, uint8 activations); inputs and outputs stay fp32.
Parity is cosine similarity and relative error against the fp32 PyTorch reference, and the graph
must hold quantize/dequantize nodes.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from latbench.export.cache import place_artifact, tmp_path_for
from latbench.export.common import (
    ONNX_OPSET,
    PARITY_TOLERANCE,
    ArtifactRecord,
    Exportable,
    captured_output,
    export_inputs,
    fill_record,
    parity_result,
    quiet_libraries,
)
from latbench.export.quantize import QUANT_OPS, QuantRecipe, quantize_onnx, quantized_parity

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"
MIN_OPSET = 17


def export_onnx(
    item: Exportable,
    final: Path,
    rec: ArtifactRecord,
    *,
    precision: str = "fp32",
    exporter: str = DEFAULT_EXPORTER,
    opset: int = ONNX_OPSET,
    seed: int = 0,
    quantization: QuantRecipe | dict[str, Any] | None = None,
) -> None:
    """Export `item` to `final` (atomically) and fill `rec`; a parity failure sets rec.error.
    `quantization`: the int8 recipe (precision "int8" only; None: the default recipe)."""
    import torch

    quiet_libraries()
    timings = rec.timings
    inp = export_inputs(item, seed, timings)
    module, x_trace, x_val, refs, out_names = inp.module, inp.x_trace, inp.x_val, inp.refs, inp.out_names

    tmp = tmp_path_for(final)
    # int8: the fp32 graph goes here first, then is quantized into `tmp`.
    fp32_tmp = tmp_path_for(final.with_name(f"fp32-{final.name}")) if precision == "int8" else tmp
    try:
        with captured_output(), torch.no_grad():
            if exporter == "torchscript":
                t0 = time.perf_counter()
                traced = torch.jit.trace(module, (x_trace,), check_trace=False)
                timings["trace"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                torch.onnx.export(
                    traced, (x_trace,), str(fp32_tmp), dynamo=False, opset_version=opset,
                    input_names=["input"], output_names=out_names, do_constant_folding=True,
                )  # fmt: skip
            elif exporter == "dynamo":
                t0 = time.perf_counter()
                torch.onnx.export(
                    module, (x_trace,), str(fp32_tmp), dynamo=True, opset_version=max(opset, 18),
                    input_names=["input"], output_names=out_names, external_data=False, verbose=False,
                )  # fmt: skip
                timings["trace"] = 0.0  # not separable: torch.export runs inside
            else:
                raise ValueError(f"unknown ONNX exporter {exporter!r} (known: {', '.join(EXPORTERS)})")
            if precision == "fp16":
                to_fp16(tmp)
            timings["convert"] = time.perf_counter() - t0
            if precision == "int8":
                recipe = QuantRecipe.from_value(quantization)
                rec.quantization = recipe.to_dict()
                timings["quantize"] = quantize_onnx(fp32_tmp, tmp, "input", tuple(int(d) for d in item.input_shape),
                                                    recipe)

        t0 = time.perf_counter()
        info = validate_onnx(tmp, x_val, refs, precision, kind=item.kind)
        timings["validate"] += time.perf_counter() - t0
        fill_record(rec, info)
        # A parity failure is still placed (to inspect it); the manifest marks it failed, so it is
        # never reused from the cache.
        place_artifact(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        fp32_tmp.unlink(missing_ok=True)


def to_fp16(path: Path) -> None:
    """fp32 ONNX file -> fp16 weights/activations with fp32 inputs/outputs, in place."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    # The converter appends the input casts at the end of the node list; ONNX requires
    # topological order.
    toposort(model.graph)
    onnx.save(model, str(path))


def toposort(graph: Any) -> None:
    """Reorder graph.node topologically (stable: the original order wherever it is valid)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def validate_onnx(path: Path, x: Any, refs: list[Any], precision: str, kind: str = "block") -> dict[str, Any]:
    """Full checker, opset and static-shape checks, then onnxruntime vs the PyTorch reference
    (int8: by cosine similarity and relative error, thresholds by `kind`, and the graph must be
    quantized)."""
    import onnx
    import onnxruntime as ort
    import torch

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ValueError(f"exported opset {opset} < {MIN_OPSET}")

    def io(values: Any) -> tuple[list[str], list[list[int]]]:
        names, shapes = [], []
        for v in values:
            dims = v.type.tensor_type.shape.dim
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
            if any(s <= 0 for s in shape):
                raise ValueError(f"{v.name} has a dynamic shape {shape}; export must be static")
            names.append(v.name)
            shapes.append(shape)
        return names, shapes

    inputs, outputs = io(model.graph.input), io(model.graph.output)
    if inputs[1] and inputs[1][0][0] != 1:
        raise ValueError(f"batch size {inputs[1][0][0]}, expected 1")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {inputs[0][0]: x.numpy()})
    op_counts = dict(sorted(Counter(n.op_type for n in model.graph.node).items()))
    if precision == "int8":
        parity = quantized_parity([r.numpy() for r in refs], got, kind)
        if not any(op_counts.get(op) for op in QUANT_OPS):
            parity = {**parity, "status": "failed", "reason": "the graph holds no quantize/dequantize node"}
    else:
        parity = parity_result([r.numpy() for r in refs], got, PARITY_TOLERANCE[precision])
    parity["runtime"] = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    return {
        "checker": "passed",
        "opset": opset,
        "static_shapes": True,
        "op_counts": op_counts,
        "parity": parity,
        "inputs": inputs,
        "outputs": outputs,
    }
