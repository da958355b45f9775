"""onnxruntime helpers shared by the CPU and Android runners: profile parsing and model inputs.

onnxruntime's profiler (SessionOptions.enable_profiling in Python, `-p` in onnxruntime_perf_test)
writes a Chrome-trace JSON array. Per-node kernel events have cat == "Node", a name ending in
"_kernel_time", dur in microseconds and args.op_name; each Session::Run is a cat == "Session",
name == "model_run" event.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from latbench.core.errors import UsageError
from latbench.export.inspect import TensorSpec, concrete_shape
from latbench.measuring.measurement import OpTime

_KERNEL_SUFFIX = "_kernel_time"

# ONNX TensorProto element types -> numpy dtype names (the ones vision models use).
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


def parse_ort_profile(source: str | bytes | Path | list | dict, *, skip_runs: int = 0) -> list[OpTime]:
    """Per-node median kernel times from an onnxruntime profile.

    `source` is a path, the JSON text, or the already parsed events. Node events inside the first
    `skip_runs` model_run windows (warm-up) are dropped when the profile has more runs than that.
    Raises ValueError for something that is not an onnxruntime profile.
    """
    if isinstance(source, Path):
        source = source.read_bytes()
    if isinstance(source, str | bytes):
        try:
            events: Any = json.loads(source)
        except ValueError as e:
            raise ValueError(f"profile is not JSON: {e}") from e
    else:
        events = source
    if isinstance(events, dict):  # Chrome trace "object format"
        events = events.get("traceEvents")
    if not isinstance(events, list):
        raise ValueError("profile is not a list of trace events")
    events = [e for e in events if isinstance(e, dict)]

    runs = sorted(e.get("ts", 0) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    cutoff = runs[skip_runs] if 0 < skip_runs < len(runs) else None

    durations: dict[str, list[float]] = {}
    op_types: dict[str, str] = {}
    for e in events:
        name = e.get("name")
        if e.get("cat") != "Node" or not isinstance(name, str) or not name.endswith(_KERNEL_SUFFIX):
            continue
        if cutoff is not None and e.get("ts", 0) < cutoff:
            continue
        try:
            dur_us = float(e["dur"])
        except (KeyError, TypeError, ValueError):
            continue
        node = name[: -len(_KERNEL_SUFFIX)]
        args = e.get("args") if isinstance(e.get("args"), dict) else {}
        op_types.setdefault(node, str(args.get("op_name") or "unknown"))
        durations.setdefault(node, []).append(dur_us / 1000.0)
    return [OpTime(op_types[n], n, statistics.median(d)) for n, d in durations.items()]


def session_inputs(session: Any) -> list[TensorSpec]:
    return [TensorSpec(i.name, concrete_shape(i.shape), _ORT_TYPES.get(i.type, i.type)) for i in session.get_inputs()]


def random_feeds(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed-seed random inputs: standard normal for floats, zeros for integer/bool inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        if s.dtype.startswith("float"):
            feeds[s.name] = rng.standard_normal(s.shape).astype(s.dtype)
        elif s.dtype in ("int32", "int64", "uint8", "int8", "bool"):
            feeds[s.name] = np.zeros(s.shape, dtype=s.dtype)
        else:
            raise UsageError(f"input {s.name!r} has type {s.dtype}, which latbench cannot feed (floats, ints, bool)")
    return feeds


def artifact_info(specs: list[TensorSpec], precision: str | None = None) -> dict[str, Any]:
    """What every measurement records about its inputs; `precision` when the graph says more than
    its inputs do (latbench.export.inspect.onnx_precision: fp16 and int8 graphs take fp32 inputs)."""
    dtypes = {s.dtype for s in specs}
    precision = precision or ("fp16" if dtypes == {"float16"} else "fp32" if dtypes <= {"float32"}
                              else ",".join(sorted(dtypes)))
    first = specs[0] if specs else None
    return {
        "input_shape": list(first.shape) if first else None,
        "input_dtype": first.dtype if first else None,
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in specs],
        "precision": precision,
    }
