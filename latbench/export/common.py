"""Shared pieces of the export pipeline: the artifact record, deterministic weights and inputs,
library versions and the small helpers both exporters use."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import latbench
from latbench.core.errors import LatbenchError, UsageError
from latbench.core.formats import FORMATS

PRECISIONS = ("fp32", "fp16", "int8")
#: Precision used when the caller does not choose one: ONNX artifacts feed CPU runtimes (fp32),
#: Core ML ones the Neural Engine/GPU, which compute in fp16 anyway. TFLite graphs stay fp32:
#: XNNPACK picks fp16 arithmetic itself where the CPU has it (latbench.export.tflite).
DEFAULT_PRECISION = {"onnx": "fp32", "coreml": "fp16", "tflite": "fp32"}
#: Precisions a format can be exported in (the others take every one of PRECISIONS). int8: ONNX by
#: onnxruntime's static QDQ quantization (latbench.export.quantize), TFLite by ai-edge-quantizer's
#: full-integer quantization (latbench.export.tflite_quant), Core ML as W8A8 by coremltools'
#: PyTorch-side quantizer (latbench.export.coreml_quant). Core ML has every precision.
FORMAT_PRECISIONS = {"tflite": ("fp32", "int8")}
DEFAULT_DEPLOYMENT_TARGET = "iOS16"
ONNX_OPSET = 17
DEFAULT_SEED = 0
#: Samples used to calibrate BatchNorm statistics (see prepare_for_export).
CALIBRATION_BATCH = 4
#: Bump when anything that changes artifact bytes changes (weights preparation, export options):
#: it is part of every content hash, so old cache entries stop matching.
PIPELINE_VERSION = 1

#: Core ML deployment targets that support ML Programs (iOS15-level and later), by coremltools 9 name.
COREML_TARGETS = (
    "iOS15", "iOS16", "iOS17", "iOS18", "iOS26",
    "macOS12", "macOS13", "macOS14", "macOS15", "macOS26",
    "watchOS8", "watchOS9", "watchOS10", "watchOS11", "watchOS26",
    "tvOS15", "tvOS16", "tvOS17", "tvOS18", "tvOS26",
)  # fmt: skip

#: Parity tolerance: max |onnx - torch| <= TOL * max(1, max |torch|). fp16 has a unit roundoff of
#: 4.9e-4; 1e-2 leaves room for ~20 roundings accumulated through a deep network while still
#: catching a wrong op (those are off by O(1)).
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
#: Core ML computes on its own kernels (BNNS/MPS/ANE), looser than onnxruntime's CPU kernels.
COREML_PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2}

STATUSES = ("exported", "cached", "failed")


@runtime_checkable
class Exportable(Protocol):
    """What can be exported: a BlockConfig, a Candidate, or anything shaped like them."""

    @property
    def key(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def build(self) -> Any: ...


@dataclass
class ArtifactRecord:
    """One exported artifact (or the failure to produce it), as stored in the manifest."""

    key: str
    kind: str
    format: str
    precision: str
    status: str  # exported | cached | failed
    name: str | None = None  # display name when the item has one (a Candidate's model/arch name)
    path: str | None = None  # absolute path of the .onnx file / .mlpackage directory
    sha256: str | None = None
    size: int | None = None  # bytes (sum over files for a .mlpackage)
    content_hash: str = ""
    deployment_target: str | None = None  # Core ML only
    exporter: str = ""
    input_names: list[str] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    export_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # build/trace/convert/validate seconds
    validation: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # the item's BlockConfig.fields(), if any
    quantization: dict[str, Any] | None = None  # int8: the recipe (latbench.export.quantize.QuantRecipe)
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def raise_for_status(self) -> ArtifactRecord:
        if not self.ok:
            raise LatbenchError(f"export of {self.key} to {self.format} failed: {self.error}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactRecord:
        names = {f.name for f in dataclass_fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> dict[str, Any]:
        """The --json view of an artifact."""
        return {
            "key": self.key,
            "name": self.name,
            "kind": self.kind,
            "format": self.format,
            "precision": self.precision,
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "status": self.status,
            "error": self.error,
            "content_hash": self.content_hash,
            "export_seconds": self.export_seconds,
            "parity": self.validation.get("parity"),
            "quantization": self.quantization,
        }


# -- argument checking -----------------------------------------------------------------------------


def parse_formats(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """"onnx,coreml" (or a list) -> ("onnx", "coreml"); one-line UsageError for anything unknown."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for p in parts:
        name = p.strip().lower()
        if not name:
            continue
        if name not in FORMATS:
            raise UsageError(f"unknown export format {p.strip()!r}: choose from {', '.join(FORMATS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError(f"no export format given: choose from {', '.join(FORMATS)}")
    return tuple(out)


def check_precision(precision: str | None, formats: tuple[str, ...] = ()) -> str | None:
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    for fmt in formats:
        allowed = FORMAT_PRECISIONS.get(fmt, PRECISIONS)
        if precision is not None and precision not in allowed:
            raise UsageError(f"the {fmt} format is {' or '.join(allowed)} only, not {precision}: "
                             f"drop --precision or export {fmt} on its own")
    return precision


def check_deployment_target(target: str) -> str:
    """Normalise the spelling (ios16 -> iOS16) and reject targets without ML Program support."""
    by_lower = {t.lower(): t for t in COREML_TARGETS}
    name = by_lower.get(str(target).strip().lower())
    if name is None:
        raise UsageError(
            f"unknown Core ML deployment target {target!r}: ML Programs need one of {', '.join(COREML_TARGETS)}"
        )
    return name


# -- versions -------------------------------------------------------------------------------------


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def library_versions(fmt: str | None = None) -> dict[str, str]:
    return dict(_library_versions(fmt))


@functools.lru_cache(maxsize=8)
def _library_versions(fmt: str | None) -> dict[str, str]:
    """Versions that determine an artifact of `fmt` (all of them when fmt is None).

    Read from package metadata, so checking the cache does not import torch or coremltools.
    onnxruntime is part of the ONNX set: its float16 converter writes the fp16 graphs and it runs
    the parity check; likewise ai-edge-litert for TFLite (delegation and parity).
    """
    names = {"onnx": ("torch", "onnx", "onnxruntime"), "coreml": ("torch", "coremltools"),
             "tflite": ("torch", "litert-torch", "litert-converter", "ai-edge-litert")}
    wanted = names[fmt] if fmt else tuple(dict.fromkeys(n for group in names.values() for n in group))
    out = {n: _dist_version(n) for n in wanted}
    out["latbench"] = latbench.__version__
    return out


# -- deterministic weights and inputs -------------------------------------------------------------


def seeded_input(shape: tuple[int, ...], seed: int) -> Any:
    """A fixed standard-normal input (what a normalised image looks like to the network)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g)


def build_module(item: Exportable, seed: int = DEFAULT_SEED) -> Any:
    """item.build() under a fixed seed, without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return item.build()


def prepare_for_export(module: Any, seed: int = DEFAULT_SEED, example_input: Any = None) -> Any:
    """Eval mode plus seeded, realistic, non-degenerate parameters; returns the module.

    Freshly built blocks are nearly the identity (layer scales of 1e-5) and their BatchNorms hold
    0/1 statistics, so a broken export could still pass a parity check and kernels would see
    unrealistic values. This:
    - draws layer scales from U(0.2, 0.8) and norm affine weights/biases from U(0.5, 1.5)/N(0, 0.1);
    - replaces every other constant-valued parameter (zero biases, zero attention-bias tables) with
      N(0, 0.1), so that every term of the graph contributes;
    - calibrates BatchNorm running statistics on `example_input` (one train-mode pass with a
      cumulative average), so activations stay at unit scale through any depth; when the pass is
      impossible (e.g. a single value per channel) the statistics are drawn at random instead.
      Pass several samples (prepared_module uses CALIBRATION_BATCH): statistics of one image
      miss the variation between images, and a whole random-weight model then amplifies another
      input's features enormously (EfficientFormerV2-L logits of ~1e5 instead of ~40).
    No value is tiny: denormals would slow CPU kernels and skew later timing.
    """
    import torch
    import torch.nn as nn

    g = torch.Generator().manual_seed(seed)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    norm_params: set[int] = set()
    bns: list[nn.modules.batchnorm._BatchNorm] = []
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, norms) and getattr(mod, "weight", None) is not None:
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
                norm_params.update((id(mod.weight), id(mod.bias)))
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                bns.append(mod)
        for name, p in module.named_parameters():
            if id(p) in norm_params or p.numel() == 0:
                continue
            if "layer_scale" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.6 + 0.2)
            elif p.numel() == 1 or bool((p == p.flatten()[0]).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        module.eval()
        if bns:
            _calibrate_batchnorm(module, bns, example_input, g)
    return module


def _calibrate_batchnorm(module: Any, bns: list, example_input: Any, g: Any) -> None:
    import torch

    def random_stats() -> None:
        for bn in bns:
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) * 1.5 + 0.5)

    if example_input is None:
        random_stats()
        return
    # A module built for batch 1 may reject the calibration batch: then its first sample alone.
    attempts = [example_input] if example_input.shape[0] == 1 else [example_input, example_input[:1]]
    saved = [bn.momentum for bn in bns]
    try:
        for x in attempts:
            try:
                for bn in bns:
                    bn.reset_running_stats()
                    bn.momentum = None  # cumulative average: one batch gives exactly its statistics
                    bn.train()
                module(x)
                # A (nearly) constant channel would be amplified by 1/sqrt(eps); floor its variance.
                for bn in bns:
                    bn.running_var.clamp_(min=1e-2)
                    if not (torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()):
                        raise ValueError("non-finite statistics")
                return
            except (ValueError, RuntimeError):
                continue
        random_stats()
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
            bn.eval()


def prepared_module(item: Exportable, seed: int = DEFAULT_SEED) -> Any:
    """Build `item` and prepare it exactly as the exporters do (shared by tests and callers).

    BatchNorm statistics come from CALIBRATION_BATCH seeded samples (one if the module only
    accepts its exported batch size of 1), distinct from the tracing and validation inputs.
    """
    module = build_module(item, seed)
    shape = tuple(int(d) for d in item.input_shape)
    return prepare_for_export(module, seed, seeded_input((CALIBRATION_BATCH, *shape[1:]), seed + 2))


def reference_outputs(module: Any, x: Any) -> list[Any]:
    import torch

    with torch.no_grad():
        out = module(x)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o.detach().float() for o in outs]


@dataclass
class ExportInputs:
    """What both exporters start from: the prepared module, its inputs and reference outputs."""

    module: Any
    x_trace: Any  # traced with one seeded input...
    x_val: Any  # ...and validated on another, so a trace that baked in values is caught
    refs: list[Any]
    out_names: list[str]


def export_inputs(item: Exportable, seed: int, timings: dict[str, float]) -> ExportInputs:
    """Build the module with deterministic weights and compute its reference outputs (timed)."""
    t0 = time.perf_counter()
    module = prepared_module(item, seed)
    shape = tuple(int(d) for d in item.input_shape)
    x_trace = seeded_input(shape, seed + 1)
    x_val = seeded_input(shape, seed)
    timings["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    refs = reference_outputs(module, x_val)
    timings["validate"] = time.perf_counter() - t0
    return ExportInputs(module, x_trace, x_val, refs, output_names_for(len(refs)))


def output_names_for(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def parity_result(refs: list[Any], got: list[Any], tol_scale: float) -> dict[str, Any]:
    """Compare numpy arrays: max abs diff against tol_scale * max(1, max |reference|)."""
    import numpy as np

    if len(refs) != len(got):
        return {"status": "failed", "reason": f"{len(got)} outputs, expected {len(refs)}"}
    max_diff = 0.0
    max_ref = 0.0
    for r, y in zip(refs, got):
        r = np.asarray(r, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if r.shape != y.shape:
            return {"status": "failed", "reason": f"output shape {list(y.shape)}, expected {list(r.shape)}"}
        if not np.isfinite(y).all():
            return {"status": "failed", "reason": "non-finite values in the output"}
        max_diff = max(max_diff, float(np.abs(r - y).max(initial=0.0)))
        max_ref = max(max_ref, float(np.abs(r).max(initial=0.0)))
    tol = tol_scale * max(1.0, max_ref)
    return {
        "status": "passed" if max_diff <= tol and not math.isnan(max_diff) else "failed",
        "max_abs_diff": max_diff,
        "max_abs_reference": max_ref,
        "tolerance": tol,
    }


def fill_record(rec: ArtifactRecord, info: dict[str, Any]) -> None:
    """Move a validation dict's "inputs"/"outputs" (names, shapes) into `rec` and keep the rest as
    rec.validation; a failed parity check makes the record's error (a skipped one does not)."""
    rec.input_names, rec.input_shapes = info.pop("inputs")
    rec.output_names, rec.output_shapes = info.pop("outputs")
    rec.validation = info
    if info["parity"]["status"] == "failed":
        rec.error = parity_error(info["parity"])


def parity_error(parity: dict[str, Any]) -> str:
    if "cosine" in parity or parity.get("metric"):
        from latbench.export.quantize import quantized_parity_error

        return quantized_parity_error(parity)
    if "reason" in parity:
        return f"parity check failed: {parity['reason']}"
    return (
        f"parity check failed: max abs diff {parity['max_abs_diff']:.3g} > tolerance {parity['tolerance']:.3g} "
        f"(max |reference| {parity['max_abs_reference']:.3g})"
    )


# -- quiet third-party output ---------------------------------------------------------------------


def quiet_libraries() -> None:
    """coremltools logs that torch 2.13 is untested and that its macOS-only bindings are missing,
    the dynamo ONNX exporter that torchvision is absent: all expected here. Call it before
    coremltools is imported; torch is imported first because its logging set-up resets the
    levels of its loggers."""
    import torch  # noqa: F401

    for name in ("coremltools", "torch.onnx", "torch._dynamo", "torch.export", "torch._export"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Swallow warnings and the progress bars converters print to stderr (kept for error reports)."""
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")
        yield buf


def safe_name(key: str) -> str:
    """A file-name-safe rendering of an item key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:120] or "item"


def is_macos() -> bool:
    return sys.platform == "darwin"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1
