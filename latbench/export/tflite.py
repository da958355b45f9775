"""LiteRT (TFLite) export: a static batch-1 `.tflite` converted with litert-torch, checked in LiteRT.

Conversion: `litert_torch.convert(module, (x,))` (torch.export inside, then the LiteRT converter)
and `.export(path)`. Tracing and converting are one call, so the whole of it is timed as
"convert" ("trace" is 0). The graph keeps PyTorch's NCHW interface: one input `args_0` of the
item's input shape, outputs `output_0`, ... in signature `serving_default` (the converter adds
the NHWC transposes itself).

The attention downsampling's query path subsamples with `AvgPool2d(1, 2)`: a 1x1 pooling with
stride 2. XNNPACK does not take 1x1 pooling with a non-unit stride (AVERAGE_POOL_2D in
tensorflow/lite/delegates/xnnpack/README.md), so that op stays on LiteRT's built-in kernels and
cuts the graph into two XNNPACK partitions, which costs the block about a third of its latency.
The PyTorch model is never changed (its state dict and checkpoints stay exact). At export time a
deep copy of the prepared module gets each such pool replaced (`substitute_pools`), and the
replacement must reproduce the original output bit for bit (torch.equal) or the export fails:

- "dwconv" (the default): a depthwise 1x1 convolution with stride 2, weights 1 and no bias.
  x * 1.0 is exact in floating point; XNNPACK delegates it, so the graph is one partition.
- "slice": x[:, :, ::2, ::2]. Exact too, but XNNPACK's STRIDED_SLICE needs unit strides (same
  README), so the graph stays split; kept to measure the difference.
- "none": the pool as it is.

What was replaced is recorded in the manifest (`validation.pool_substitution`) and the variant is
part of the exporter name, hence of the content hash.

Validation: the flatbuffer's op inventory (op name -> count), then the LiteRT Interpreter with its
default XNNPACK delegate on one thread: how the graph was delegated (`xnnpack_delegation`) and
parity with PyTorch at the fp32 tolerance. No fp16: XNNPACK computes in fp16 on its own where
the CPU supports it, so an fp16 graph would measure nothing different.

int8: the fp32 graph (converted as above, to a temp file beside the artifact) is quantized to full
integer by ai-edge-quantizer with the recipe's calibration (latbench.export.tflite_quant); input
and output stay float32. Parity is cosine similarity and relative error against the fp32 PyTorch
reference (latbench.export.quantize.quantized_parity), and the graph must be quantized.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from latbench.core.errors import UsageError
from latbench.export.cache import place_artifact, tmp_path_for
from latbench.export.common import (
    PARITY_TOLERANCE,
    ArtifactRecord,
    Exportable,
    captured_output,
    export_inputs,
    fill_record,
    parity_result,
    quiet_libraries,
)
from latbench.export.quantize import QuantRecipe, quantized_parity

POOL_SUBSTITUTES = ("dwconv", "slice", "none")
DEFAULT_POOL_SUBSTITUTE = "dwconv"
INSTALL_HINT = "pip install 'latbench[litert]'"
#: Import names the format needs: the converter and the runtime (int8: and the quantizer).
REQUIRED_MODULES = ("litert_torch", "ai_edge_litert")
INT8_MODULES = (*REQUIRED_MODULES, "ai_edge_quantizer")


def exporter_name(pool_substitute: str = DEFAULT_POOL_SUBSTITUTE) -> str:
    """The exporter string stored in records and content hashes (it names the substitution)."""
    return "litert-torch" if pool_substitute == "none" else f"litert-torch+{pool_substitute}-pool"


EXPORTER = exporter_name()


def missing_modules(names: tuple[str, ...] = REQUIRED_MODULES) -> list[str]:
    """Those of `names` that are not installed (found without importing them)."""
    return [m for m in names if importlib.util.find_spec(m) is None]


def check_available(what: str = "the tflite format", names: tuple[str, ...] = REQUIRED_MODULES) -> None:
    """One-line UsageError naming the extra to install when the LiteRT packages are missing."""
    missing = missing_modules(names)
    if missing:
        listed = " and ".join(m.replace("_", "-") for m in missing)
        verb = "is" if len(missing) == 1 else "are"
        raise UsageError(f"{what} needs {listed}, which {verb} not installed: {INSTALL_HINT}")


def import_litert() -> Any:
    """Import litert_torch (jax and transformers come with it) quietly; returns the module."""
    quiet_libraries()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with captured_output(), fd_silenced():
        import litert_torch
    return litert_torch


# -- export-time pool substitution ----------------------------------------------------------------


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def is_strided_unit_pool(mod: Any) -> bool:
    """A 1x1 average or max pooling without padding and with a non-unit stride: pure subsampling."""
    import torch.nn as nn

    if isinstance(mod, nn.AvgPool2d):
        if mod.divisor_override not in (None, 1):
            return False
    elif isinstance(mod, nn.MaxPool2d):
        if _pair(mod.dilation) != (1, 1):
            return False
    else:
        return False
    stride = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
    return _pair(mod.kernel_size) == (1, 1) and _pair(mod.padding) == (0, 0) and stride != (1, 1)


def _subsamplers() -> tuple[type, type]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class StridedSlice(nn.Module):
        """x[:, :, ::sh, ::sw]: what a 1x1 pooling with stride (sh, sw) computes."""

        def __init__(self, stride: tuple[int, int]):
            super().__init__()
            self.stride = stride

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, :: self.stride[0], :: self.stride[1]]

    class DepthwiseSubsample(nn.Module):
        """A depthwise 1x1 convolution with weights 1 and no bias: x subsampled by `stride`, exactly."""

        def __init__(self, channels: int, stride: tuple[int, int]):
            super().__init__()
            self.stride = stride
            self.groups = channels
            self.register_buffer("weight", torch.ones(channels, 1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight, stride=self.stride, groups=self.groups)

    return StridedSlice, DepthwiseSubsample


def substitute_pools(module: Any, example: Any, mode: str = DEFAULT_POOL_SUBSTITUTE) -> tuple[Any, dict[str, Any]]:
    """(module to convert, record of what was replaced): a deep copy of `module` whose strided 1x1
    pools are replaced as `mode` says. `module` itself is never touched; it is returned as it is
    when there is nothing to replace or `mode` is "none". The channels of each pool are read on
    one forward pass of `example`."""
    import torch

    if mode not in POOL_SUBSTITUTES:
        raise ValueError(f"unknown pool substitute {mode!r} (known: {', '.join(POOL_SUBSTITUTES)})")
    targets = [name for name, m in module.named_modules() if name and is_strided_unit_pool(m)]
    info: dict[str, Any] = {"mode": mode, "replaced": []}
    if mode == "none" or not targets:
        return module, info

    channels: dict[str, int] = {}
    modules = dict(module.named_modules())

    def recorder(name: str) -> Callable[..., None]:
        def hook(_mod: Any, args: tuple) -> None:  # returning None leaves the input as it is
            channels.setdefault(name, int(args[0].shape[1]))

        return hook

    hooks = [modules[name].register_forward_pre_hook(recorder(name)) for name in targets]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()

    StridedSlice, DepthwiseSubsample = _subsamplers()
    new = copy.deepcopy(module)
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        old = getattr(parent, attr)
        stride = _pair(old.stride if old.stride is not None else old.kernel_size)
        repl = StridedSlice(stride) if mode == "slice" else DepthwiseSubsample(channels[name], stride)
        setattr(parent, attr, repl)
        info["replaced"].append({"module": name, "op": type(old).__name__, "stride": list(stride),
                                 "channels": channels[name]})
    return new.eval(), info


def check_substitution(original: Any, substituted: Any, x: Any) -> bool:
    """Whether `substituted` reproduces the outputs of `original` on `x` bit for bit."""
    import torch

    with torch.no_grad():
        a, b = original(x), substituted(x)
    a = list(a) if isinstance(a, (tuple, list)) else [a]
    b = list(b) if isinstance(b, (tuple, list)) else [b]
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


# -- export ---------------------------------------------------------------------------------------


def export_tflite(
    item: Exportable,
    final: Path,
    rec: ArtifactRecord,
    *,
    precision: str = "fp32",
    pool_substitute: str = DEFAULT_POOL_SUBSTITUTE,
    seed: int = 0,
    quantization: QuantRecipe | dict[str, Any] | None = None,
) -> None:
    """Convert `item` to a .tflite at `final` (atomically) and fill `rec`; a parity failure sets
    rec.error (the file is still placed, to inspect, and the manifest marks it failed).
    `quantization`: the int8 recipe's calibration (precision "int8" only; None: the default)."""
    import torch

    if precision not in ("fp32", "int8"):
        raise ValueError(f"TFLite export is fp32 or int8 (got {precision}); XNNPACK picks fp16 arithmetic itself")
    check_available("int8 tflite" if precision == "int8" else "the tflite format",
                    INT8_MODULES if precision == "int8" else REQUIRED_MODULES)
    litert_torch = import_litert()
    timings = rec.timings
    inp = export_inputs(item, seed, timings)
    module, x_trace, x_val, refs = inp.module, inp.x_trace, inp.x_val, inp.refs

    t0 = time.perf_counter()
    to_convert, substitution = substitute_pools(module, x_val, pool_substitute)
    if substitution["replaced"]:
        substitution["torch_identical"] = check_substitution(module, to_convert, x_val)
        if not substitution["torch_identical"]:
            raise ValueError(f"the {pool_substitute} pool substitute changed the PyTorch output")
    timings["substitute"] = time.perf_counter() - t0

    tmp = tmp_path_for(final)
    # int8: the fp32 graph goes here first, then is quantized into `tmp`.
    fp32_tmp = tmp_path_for(final.with_name(f"fp32-{final.name}")) if precision == "int8" else tmp
    try:
        with captured_output(), fd_silenced() as native_log, torch.no_grad():
            t0 = time.perf_counter()
            try:
                litert_torch.convert(to_convert, (x_trace,)).export(str(fp32_tmp))
            except Exception as exc:
                raise RuntimeError(f"litert-torch conversion failed: {exc}{_last_line(native_log())}") from exc
            timings["convert"] = time.perf_counter() - t0
            timings["trace"] = 0.0  # torch.export runs inside litert_torch.convert
        if not fp32_tmp.is_file() or fp32_tmp.stat().st_size == 0:
            raise RuntimeError("litert-torch wrote no model")
        if precision == "int8":
            from latbench.export.tflite_quant import litert_recipe, quantize_tflite

            recipe = QuantRecipe.from_value(quantization)
            rec.quantization = litert_recipe(recipe)
            timings["quantize"] = quantize_tflite(fp32_tmp, tmp, tuple(int(d) for d in item.input_shape), recipe)

        t0 = time.perf_counter()
        info = validate_tflite(tmp, x_val.numpy(), [r.numpy() for r in refs], precision=precision, kind=item.kind)
        timings["validate"] += time.perf_counter() - t0
        info["pool_substitution"] = substitution
        fill_record(rec, info)  # a parity failure is placed too, to inspect; the manifest marks it failed
        place_artifact(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        fp32_tmp.unlink(missing_ok=True)


def _last_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return f" ({lines[-1][:200]})" if lines else ""


# -- inspection -----------------------------------------------------------------------------------


def op_inventory(path: str | Path) -> dict[str, int]:
    """Op name -> count over every subgraph of a .tflite flatbuffer (custom ops as CUSTOM:code)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # Codes above 127 live in BuiltinCode; files from older converters fill DeprecatedBuiltinCode only.
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append(f"CUSTOM:{custom.decode() if custom else '?'}")
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    counts: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            counts[codes[sg.Operators(j).OpcodeIndex()]] += 1
    return dict(sorted(counts.items()))


def primary_subgraph_ops(path: str | Path) -> int:
    """Number of operators of subgraph 0 (the one the interpreter runs)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    return model.Subgraphs(0).OperatorsLength() if model.SubgraphsLength() else 0


def xnnpack_delegation(interpreter: Any, n_ops: int) -> dict[str, Any]:
    """How subgraph 0 was split between XNNPACK and the built-in kernels.

    `interpreter` has allocated its tensors, which is when the default XNNPACK delegate is applied.
    LiteRT keeps the model's `n_ops` nodes and appends one node per partition it handed to the
    delegate, whose inputs and outputs are the partition's boundary tensors. Walking back from a
    partition's outputs to its inputs through the original nodes gives the nodes it replaced;
    what no partition covers runs on the built-in kernels. (`_get_ops_details` is the
    interpreter's node list, documented as experimental; the execution plan is not exposed.)
    """
    ops = interpreter._get_ops_details()
    if len(ops) < n_ops:
        return {"status": "unknown", "reason": f"the interpreter has {len(ops)} nodes, the model {n_ops} ops"}
    producer: dict[int, int] = {}
    for op in ops[:n_ops]:
        for t in op["outputs"]:
            producer[int(t)] = int(op["index"])
    covered: set[int] = set()
    sizes = []
    for op in ops[n_ops:]:
        boundary = {int(t) for t in op["inputs"]}
        nodes: set[int] = set()
        stack = [int(t) for t in op["outputs"]]
        while stack:
            t = stack.pop()
            if t in boundary or t not in producer or producer[t] in nodes:
                continue
            n = producer[t]
            nodes.add(n)
            stack.extend(int(x) for x in ops[n]["inputs"] if int(x) >= 0)
        sizes.append(len(nodes))
        covered |= nodes
    undelegated = Counter(ops[i]["op_name"] for i in range(n_ops) if i not in covered)
    return {
        "nodes": n_ops,
        "partitions": len(sizes),
        "delegated_nodes": len(covered),
        "undelegated_ops": dict(sorted(undelegated.items())),
        "fully_delegated": n_ops > 0 and len(sizes) == 1 and not undelegated,
        "partition_sizes": sizes,
    }


def runtime_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "missing"


def validate_tflite(path: Path, x: Any, refs: list[Any], num_threads: int = 1, *, precision: str = "fp32",
                    kind: str = "block") -> dict[str, Any]:
    """Op inventory, XNNPACK delegation and parity with the PyTorch reference (numpy arrays); int8
    by cosine similarity and relative error, thresholds by `kind`, and the graph must be quantized."""
    from ai_edge_litert.interpreter import Interpreter

    inventory = op_inventory(path)
    with fd_silenced():
        interp = Interpreter(model_path=str(path), num_threads=num_threads)
        interp.allocate_tensors()
    delegation = xnnpack_delegation(interp, primary_subgraph_ops(path))

    signatures = interp.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(f"expected one signature, found {sorted(signatures)}")
    key = next(iter(signatures))
    runner = interp.get_signature_runner(key)
    in_details, out_details = runner.get_input_details(), runner.get_output_details()
    in_names = list(signatures[key]["inputs"])
    out_names = sorted(signatures[key]["outputs"], key=_output_order)

    def shapes(details: dict, names: list[str]) -> list[list[int]]:
        out = []
        for n in names:
            sig = [int(d) for d in details[n].get("shape_signature", details[n]["shape"])]
            if any(d <= 0 for d in sig):
                raise ValueError(f"{n} has a dynamic shape {sig}; export must be static")
            out.append([int(d) for d in details[n]["shape"]])
        return out

    in_shapes, out_shapes = shapes(in_details, in_names), shapes(out_details, out_names)
    if len(in_names) != 1:
        raise ValueError(f"expected one input, found {in_names}")
    if in_shapes[0][0] != 1:
        raise ValueError(f"batch size {in_shapes[0][0]}, expected 1")

    with fd_silenced():
        got = runner(**{in_names[0]: x.astype(in_details[in_names[0]]["dtype"])})
    outputs = [got[n] for n in out_names]
    if precision == "int8":
        from latbench.export.inspect import tflite_precision
        from latbench.export.tflite_quant import LITERT_INT8_PARITY

        parity = quantized_parity(refs, outputs, kind, LITERT_INT8_PARITY)
        if tflite_precision(path) != "int8":
            parity = {**parity, "status": "failed", "reason": "the graph holds no QUANTIZE op or int8 tensor"}
    else:
        parity = parity_result(refs, outputs, PARITY_TOLERANCE["fp32"])
    parity["runtime"] = f"ai-edge-litert {runtime_version()} Interpreter, XNNPACK, {num_threads} thread(s)"
    return {
        "op_counts": inventory,
        "xnnpack": delegation,
        "signature": key,
        "static_shapes": True,
        "parity": parity,
        "inputs": (in_names, in_shapes),
        "outputs": (out_names, out_shapes),
    }


def _output_order(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (sys.maxsize, name)


# -- native log capture ---------------------------------------------------------------------------


@contextlib.contextmanager
def fd_silenced() -> Iterator[Callable[[], str]]:
    """Send this process's stdout/stderr file descriptors to a temp file while inside.

    The converter and the runtime log from C++ straight to fd 1 and 2 (absl "I0000 ..." lines,
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."), which Python-level redirection
    does not catch. Yields a callable returning what was written so far. Not for use from a
    thread while another thread prints.
    """
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved: list[tuple[int, int]] = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
        except OSError:  # no real descriptors (an embedded interpreter): capture nothing
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            yield lambda: ""
            return

        def read() -> str:
            sink.flush()
            pos = sink.tell()
            sink.seek(0)
            data = sink.read()
            sink.seek(pos)
            return data.decode(errors="replace")

        try:
            yield read
        finally:
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
