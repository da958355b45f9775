"""What the iPhone and Mac runners share: the coremltools API handle, compute units, inputs, per-op.

The coremltools objects the runners use (MLModel, ComputeUnit and the experimental remote-device
harness: Device, DeviceType, MLModelBenchmarker) are reached through one "API" object, so tests
can hand in a fake with the same names and signatures. Resolution order: the `coreml_api`
argument, then the module attribute `COREML_API`, then the real coremltools.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from latbench.core.errors import UsageError
from latbench.core.text import first_line
from latbench.export.inspect import TensorSpec
from latbench.measuring.measurement import OpTime

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
ESTIMATED_OPS_WARNING = (
    "Core ML per-op times are estimates (whole-model time x compute-plan cost weight), not measurements"
)
# coremltools.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType values.
_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32", 131080: "int8"}

#: Set to an object with the coremltools names to replace the real API process-wide.
COREML_API: Any = None

T = TypeVar("T")


def real_coreml_api() -> Any:
    import coremltools as ct
    from coremltools.models.ml_program.experimental.perf_utils import MLModelBenchmarker
    from coremltools.models.ml_program.experimental.remote_device import (
        AppSigningCredentials,
        Device,
        DeviceState,
        DeviceType,
    )

    return SimpleNamespace(
        MLModel=ct.models.MLModel,
        ComputeUnit=ct.ComputeUnit,
        Device=Device,
        DeviceType=DeviceType,
        DeviceState=DeviceState,
        MLModelBenchmarker=MLModelBenchmarker,
        AppSigningCredentials=AppSigningCredentials,
        __version__=ct.__version__,
    )


def get_api(api: Any = None) -> Any:
    if api is not None:
        return api
    if COREML_API is not None:
        return COREML_API
    return real_coreml_api()


def host_os(override: str | None = None) -> str:
    return override or platform.system()


def check_compute_units(name: str) -> str:
    name = name.upper()
    if name not in COMPUTE_UNITS:
        raise UsageError(f"compute units must be one of {', '.join(COMPUTE_UNITS)}, got {name!r}")
    return name


def run_async(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(coro)


def spec_inputs(model: Any) -> list[TensorSpec]:
    """Multi-array inputs from an MLModel's spec description; flexible shapes are rejected."""
    specs = []
    for feature in model.get_spec().description.input:
        arr = feature.type.multiArrayType
        shape = tuple(int(d) for d in arr.shape)
        if not shape:
            raise UsageError(f"input {feature.name} has a flexible shape; export with a fixed input shape")
        specs.append(TensorSpec(feature.name, shape, _ARRAY_DTYPES.get(int(arr.dataType), "float32")))
    return specs


def spec_precision(model: Any) -> str | None:
    """"int8" when the model's ML Program holds quantize ops (W8A8: latbench.export.coreml_quant
    quantizes activations), else None: the inputs' dtype then says fp16 or fp32."""
    from latbench.export.coreml import mil_op_counts

    spec = model.get_spec()
    if not getattr(spec, "mlProgram", None):  # a neural network spec: no quantized activations here
        return None
    return "int8" if mil_op_counts(spec).get("quantize") else None


def readable_model(api: Any, artifact: Path, compute_units: str) -> tuple[Any, list[TensorSpec]]:
    """The artifact opened without compiling it, and its inputs. UsageError when the file is not
    a readable Core ML model (the user's to fix); loading it on a device is the runner's step."""
    try:
        model = api.MLModel(str(artifact), compute_units=getattr(api.ComputeUnit, compute_units), skip_model_load=True)
        return model, spec_inputs(model)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"{artifact.name} is not a readable Core ML model: {first_line(e)}") from e


def ops_from_execution_info(infos: list[Any]) -> list[OpTime]:
    """MLModelBenchmarker.benchmark_operation_execution results -> OpTime (estimates)."""
    ops = []
    for info in infos:
        stats = info.measurement.statistics
        if stats is None:
            continue  # the compute plan gave no cost for this op
        outputs = list(getattr(info.spec, "outputs", []) or [])
        name = outputs[0].name if outputs else str(info.path)
        ops.append(OpTime(str(info.spec.type), name, float(stats.median)))
    return ops
