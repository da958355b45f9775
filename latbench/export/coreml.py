"""Core ML export: an ML Program `.mlpackage` converted from a torch.export ExportedProgram.

`torch.export.export(module.eval(), (x,))` followed by `.run_decompositions({})` converts every
block of the space and the named models; the `torch.jit.trace` route fails on the attention
blocks' shape arithmetic, so it is not offered. Inputs and outputs are named "input" and
"output" ("output_0", ... for several outputs) and have the program's precision: fp16 programs
(the default) take and return fp16 tensors, as a block does inside an fp16 network, so no cast
at the boundary distorts a block's latency. The I/O dtypes are recorded in the validation dict.

Validation works on any OS: the saved package is reloaded with coremltools, its declared I/O is
checked against the PyTorch reference, and the MIL op inventory (op type -> count) is recorded,
which is what the device will run. On macOS the package is also run (`predict`, CPU only, for
reproducible numbers) and compared with PyTorch; elsewhere that step is skipped with the reason.

int8 (W8A8): quantized in PyTorch before conversion and converted from a trace
(latbench.export.coreml_quant); its parity is by cosine and relative error, and off macOS it is
taken on the reference-quantized PyTorch module that was converted.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

from latbench.core.text import first_line
from latbench.export.cache import place_artifact, tmp_path_for
from latbench.export.common import (
    COREML_PARITY_TOLERANCE,
    DEFAULT_DEPLOYMENT_TARGET,
    ArtifactRecord,
    Exportable,
    captured_output,
    export_inputs,
    fill_record,
    is_macos,
    parity_result,
    quiet_libraries,
)
from latbench.export.quantize import QuantRecipe

EXPORTER = "torch.export+coremltools"


def import_coremltools() -> Any:
    quiet_libraries()
    with captured_output():  # import-time notices about the missing macOS-only bindings
        import coremltools as ct
    return ct


def export_coreml(
    item: Exportable,
    final: Path,
    rec: ArtifactRecord,
    *,
    precision: str = "fp16",
    deployment_target: str = DEFAULT_DEPLOYMENT_TARGET,
    seed: int = 0,
    quantization: QuantRecipe | dict[str, Any] | None = None,
) -> None:
    """Convert `item` to an .mlpackage at `final` (atomically) and fill `rec`. `quantization`: the
    int8 recipe's calibration (precision "int8" only; None: the default)."""
    import shutil

    import numpy as np
    import torch

    ct = import_coremltools()
    timings = rec.timings
    inp = export_inputs(item, seed, timings)
    module, x_trace, x_val, refs, out_names = inp.module, inp.x_trace, inp.x_val, inp.refs, inp.out_names

    tmp = tmp_path_for(final)
    try:
        target = getattr(ct.target, deployment_target)
        quantized = None
        with captured_output():
            if precision == "int8":
                from latbench.export.coreml_quant import coreml_recipe, min_target, w8a8_module

                if min_target(deployment_target) != deployment_target:
                    raise ValueError(f"int8 Core ML needs {min_target(deployment_target)} or later, "
                                     f"got {deployment_target}")
                recipe = QuantRecipe.from_value(quantization)
                rec.quantization = coreml_recipe(recipe)
                t0 = time.perf_counter()
                quantized = w8a8_module(module, x_trace, recipe)
                timings["quantize"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            program = (torch.jit.trace(quantized, (x_trace,)) if quantized is not None
                       else torch.export.export(module, (x_trace,)).run_decompositions({}))
            timings["trace"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            # int8 programs compute in fp16 between their quantized ops, with fp16 I/O like fp16 ones.
            dtype = np.float32 if precision == "fp32" else np.float16
            mlmodel = ct.convert(
                program,
                inputs=[ct.TensorType(name="input", shape=tuple(x_trace.shape), dtype=dtype)],
                outputs=[ct.TensorType(name=n, dtype=dtype) for n in out_names],
                convert_to="mlprogram",
                minimum_deployment_target=target,
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                skip_model_load=True,  # loading compiles, which only works (and is only needed) on macOS
            )
            try:
                mlmodel.save(str(tmp))
            finally:
                # coremltools keeps the converted program in a temporary .mlpackage that it only
                # deletes at interpreter exit, which pool and pytest-xdist workers skip.
                if getattr(mlmodel, "is_temp_package", False):
                    shutil.rmtree(mlmodel.package_path, ignore_errors=True)
            timings["convert"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        simulated = None
        if quantized is not None:
            with torch.no_grad():
                out = quantized(x_val)
            simulated = [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]
        info = validate_coreml(ct, tmp, x_val, refs, precision, kind=item.kind, simulated=simulated)
        timings["validate"] += time.perf_counter() - t0
        info["deployment_target"] = deployment_target
        info["compute_precision"] = precision
        fill_record(rec, info)
        place_artifact(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def mil_op_counts(spec: Any) -> dict[str, int]:
    """Op type -> count over every function and nested block of an ML Program spec."""
    counts: Counter[str] = Counter()

    def walk(block: Any) -> None:
        for op in block.operations:
            counts[op.type] += 1
            for sub in op.blocks:
                walk(sub)

    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            walk(block)
    return dict(sorted(counts.items()))


def _feature_shape(feature: Any) -> list[int]:
    return [int(d) for d in feature.type.multiArrayType.shape]


def _feature_dtype(ct: Any, feature: Any) -> str:
    array_type = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    return array_type.ArrayDataType.Name(feature.type.multiArrayType.dataType).lower()


def validate_coreml(ct: Any, path: Path, x: Any, refs: list[Any], precision: str, *, kind: str = "block",
                    simulated: list[Any] | None = None) -> dict[str, Any]:
    """Reload the package, check its I/O against the reference, record its ops; predict on macOS.
    int8: parity by cosine and relative error (of `simulated`, the quantized PyTorch module's
    outputs, off macOS), and the program must hold quantize ops."""
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"reloaded model is a {spec.WhichOneof('Type')}, expected an ML Program")
    desc = spec.description
    inputs = ([i.name for i in desc.input], [_feature_shape(i) for i in desc.input])
    outputs = ([o.name for o in desc.output], [_feature_shape(o) for o in desc.output])
    expected = [list(r.shape) for r in refs]
    # The converter may leave output shapes undeclared; when declared they must match.
    declared = [s for s in outputs[1] if s]
    if len(outputs[0]) != len(refs) or (declared and declared != expected[: len(declared)]):
        raise ValueError(f"reloaded package declares outputs {outputs}, expected shapes {expected}")
    outputs = (outputs[0], [s or e for s, e in zip(outputs[1], expected)])

    dtypes = {f.name: _feature_dtype(ct, f) for f in [*desc.input, *desc.output]}
    ops = mil_op_counts(spec)
    if precision == "int8":
        parity = _int8_parity(ct, path, x, refs, kind, simulated, inputs[0][0], outputs[0], dtypes, ops)
    elif is_macos():
        parity = _predict_parity(ct, path, x, refs, precision, inputs[0][0], outputs[0], dtypes)
    else:
        parity = {"status": "skipped",
                  "reason": f"Core ML prediction needs macOS; this is {platform.system() or 'unknown OS'}"}
    return {
        "reload": "passed",
        "spec_version": int(spec.specificationVersion),
        "io_dtypes": dtypes,
        "mil_ops": ops,
        "parity": parity,
        "inputs": inputs,
        "outputs": outputs,
    }


def _int8_parity(ct: Any, path: Path, x: Any, refs: list[Any], kind: str, simulated: list[Any] | None,
                 in_name: str, out_names: list[str], dtypes: dict[str, str], ops: dict[str, int]) -> dict[str, Any]:
    from latbench.export.quantize import quantized_parity

    refs_np = [r.numpy() for r in refs]
    why = f"Core ML prediction needs macOS; this is {platform.system() or 'unknown OS'}"
    if is_macos():
        try:
            model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        except Exception as exc:  # e.g. a deployment target newer than this Mac's OS
            why = f"this Mac cannot load the package: {first_line(exc, with_type=True)}"
        else:
            got = model.predict({in_name: x.numpy().astype(dtypes[in_name])})
            parity = quantized_parity(refs_np, [got[n] for n in out_names], kind)
            parity["runtime"] = "Core ML (CPU_ONLY)"
            return _require_quantize(parity, ops)
    parity = quantized_parity(refs_np, simulated or [], kind)
    parity["runtime"] = f"the reference-quantized PyTorch module that was converted ({why})"
    return _require_quantize(parity, ops)


def _require_quantize(parity: dict[str, Any], ops: dict[str, int]) -> dict[str, Any]:
    if not ops.get("quantize"):
        return {**parity, "status": "failed", "reason": "the program holds no quantize op"}
    return parity


def _predict_parity(
    ct: Any, path: Path, x: Any, refs: list[Any], precision: str, in_name: str, out_names: list[str],
    dtypes: dict[str, str],
) -> dict[str, Any]:
    """macOS only: run the package on the CPU (reproducible numbers) and compare with PyTorch."""
    try:
        model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
    except Exception as exc:  # e.g. a deployment target newer than this Mac's OS
        return {"status": "skipped", "reason": f"this Mac cannot load the package: {first_line(exc, with_type=True)}"}
    feed = x.numpy().astype("float16" if dtypes[in_name] == "float16" else "float32")
    got = model.predict({in_name: feed})
    parity = parity_result([r.numpy() for r in refs], [got[n] for n in out_names], COREML_PARITY_TOLERANCE[precision])
    parity["runtime"] = "Core ML (CPU_ONLY)"
    return parity
