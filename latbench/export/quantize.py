"""int8 ONNX: onnxruntime's static QDQ quantization of the fp32 graph, and the parity metric that fits it.

The recipe (QuantRecipe) is recorded in every int8 artifact's manifest entry and is part of its
content hash, so changing any field (the calibration seed, the number of batches, ...) exports
again. Calibration inputs are a seeded, recorded source: `calibration_batches` standard-normal
batches of the artifact's input shape drawn from numpy.random.default_rng(calibration_seed)
(what a normalised image looks like to the network, as the weights' own preparation assumes).

Parity: max-abs tolerances (fp32, fp16) do not fit quantization, whose error is spread over every
element at the scale of one quantization step. An int8 graph is compared with the fp32 PyTorch
output by cosine similarity and by relative L2 error (||int8 - fp32|| / ||fp32||), over the
whole output. Measured with the default recipe (onnxruntime 1.31.1, x86, the validation input
of the export, calibration seed 0; `tests/export/test_int8.py` checks one block of every kind):

    block kind: configurations          cosine              rel. L2 error
    stem: c32, c40                       0.99949, 0.99949    0.032, 0.032
    ffn: s1-c32-e4, s3-c144-e3,          0.99959, 0.99963,   0.029, 0.027,
         s4-c176-e2, s4-c384-e2          0.99968, 0.99967    0.025, 0.026
    mhsa: s3-c96, s3-c192, s4-c176,      0.99950, 0.99943,   0.032, 0.034,
          s4-c384                        0.99962, 0.99958    0.028, 0.029
    embed: s1-c32-o48, s2-c48-o96,       0.99984, 0.99986,   0.018, 0.016,
           s2-c80-o192                   0.99986             0.017
    attndown: c96-o176, c192-o384        0.99942, 0.99939    0.034, 0.035
    head: c176, c384                     0.99981, 0.99980    0.020, 0.020
    empty: c32 56x56, c3 224x224         0.99995, 0.99994    0.010, 0.011

Blocks are held to cosine >= 0.998 and relative error <= 0.08 (about three times the worst
1 - cosine and twice the worst error seen); a wrong or missing op gives a cosine far below that.
Whole models accumulate the error of every block, and with latbench's random (not trained)
weights more so: EfficientFormerV2 S0 0.966 / 0.27, S1 0.977 / 0.21, S2 0.895 / 0.52, L 0.984 /
0.22, two random subnets 0.982 / 0.20 and 0.949 / 0.32, MobileNetV2-1.0 0.99992 / 0.012.
Percentile calibration (99.99) or 32 batches moved S2 only to cosine 0.933 / 0.927. (The
whole-model figures were taken with calibration seed 1000; the block figures differ from seed
1000's by at most 0.0001 in cosine; with the default seed 0, S0 is 0.988 / 0.17 and S2 0.931 /
0.37: whole-model figures move with the calibration data.) Whole models are therefore held to cosine >= 0.85 and
relative error <= 0.6: that still fails a structurally wrong graph, not a merely imprecise one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.core.errors import UsageError

#: Thresholds of the int8 parity check, by what is exported (see the module docstring).
INT8_PARITY = {
    "block": {"min_cosine": 0.998, "max_rel_error": 0.08},
    "model": {"min_cosine": 0.85, "max_rel_error": 0.6},
}
#: Node types that only a quantized graph holds.
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
             "DynamicQuantizeLinear")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
#: The "method" ONNX int8 recipes record.
QUANTIZE_STATIC = "onnxruntime.quantization.quantize_static"
ACTIVATION_TYPES = ("uint8", "int8")


@dataclass(frozen=True)
class QuantRecipe:
    """How an int8 ONNX artifact is made from the fp32 one (recorded and hashed with it)."""

    calibration_seed: int = 0
    calibration_batches: int = 8
    calibrate_method: str = "minmax"
    activation_type: str = "uint8"  # runs on onnxruntime's x86 and ARM CPU kernels (U8S8)
    weight_type: str = "int8"
    per_channel: bool = True
    quant_format: str = "QDQ"

    def __post_init__(self) -> None:
        if not isinstance(self.calibration_batches, int) or self.calibration_batches < 1:
            raise UsageError(f"calibration batches must be >= 1, got {self.calibration_batches!r}")
        if not isinstance(self.calibration_seed, int) or isinstance(self.calibration_seed, bool):
            raise UsageError(f"the calibration seed is an integer, got {self.calibration_seed!r}")
        if self.calibrate_method not in CALIBRATE_METHODS:
            raise UsageError(f"unknown calibration method {self.calibrate_method!r}: choose from "
                             f"{', '.join(CALIBRATE_METHODS)}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise UsageError(f"int8 activations are {' or '.join(ACTIVATION_TYPES)}, not {self.activation_type!r}")
        if self.weight_type != "int8" or self.quant_format != "QDQ":
            raise UsageError("int8 artifacts have int8 weights in QDQ format")

    def to_dict(self) -> dict[str, Any]:
        return {"method": QUANTIZE_STATIC, **dataclasses.asdict(self),
                "calibration_source": "standard normal at the input shape, numpy.random.default_rng(calibration_seed)"}

    @classmethod
    def from_value(cls, value: QuantRecipe | dict[str, Any] | None) -> QuantRecipe:
        """A recipe from itself, a mapping of its fields (others are ignored: a recorded to_dict()), or None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in value.items() if k in names})
        raise UsageError(f"a quantization recipe is a QuantRecipe or a mapping, got {type(value).__name__}")


def minmax_recipe(recipe: QuantRecipe, what: str, method: str, **tool_versions: str) -> dict[str, Any]:
    """The recorded fields of another format's int8 recipe that uses `recipe`'s min/max
    calibration (the same seeded batches) with int8 weights; `what` names the format in the
    one-line refusal of other calibration methods (refused rather than silently replaced). The
    tool versions are recorded, hence hashed, with int8 artifacts only (hashing them with every
    artifact of the format would re-export the fp32 ones). Callers add their activation fields."""
    if recipe.calibrate_method != "minmax":
        raise UsageError(f"int8 {what} calibrates by minmax only, not {recipe.calibrate_method!r}")
    return {"method": method, **tool_versions, "calibration_seed": recipe.calibration_seed,
            "calibration_batches": recipe.calibration_batches, "calibrate_method": "minmax", "weight_type": "int8",
            "per_channel": recipe.per_channel, "calibration_source": QuantRecipe().to_dict()["calibration_source"]}


def calibration_batches(input_name: str, shape: tuple[int, ...], recipe: QuantRecipe) -> list[dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(recipe.calibration_seed)
    return [{input_name: rng.standard_normal(tuple(shape), dtype=np.float32)}
            for _ in range(recipe.calibration_batches)]


def quantize_onnx(src: Path, dst: Path, input_name: str, shape: tuple[int, ...], recipe: QuantRecipe) -> float:
    """Write the int8 (QDQ) graph of the fp32 ONNX file `src` to `dst`; returns the seconds it took."""
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # The calibration sessions would print onnxruntime's graph-cleaning warnings straight to fd 2.
    onnxruntime.set_default_logger_severity(3)
    batches = iter(calibration_batches(input_name, shape, recipe))

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, Any] | None:
            return next(batches, None)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.calibrate_method]
    t0 = time.perf_counter()
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=recipe.per_channel,
                    activation_type=QuantType.QUInt8 if recipe.activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method)
    return time.perf_counter() - t0


def quantized_parity(refs: list[Any], got: list[Any], kind: str,
                     thresholds: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Cosine similarity and relative L2 error of int8 outputs against the fp32 reference (numpy).
    `thresholds`: by "block" and "model", as INT8_PARITY (the default: onnxruntime's figures)."""
    import numpy as np

    limits = (thresholds or INT8_PARITY)["model" if kind == "model" else "block"]
    metric = "cosine similarity and relative L2 error"
    if len(refs) != len(got):
        return {"status": "failed", "metric": metric, "reason": f"{len(got)} outputs, expected {len(refs)}"}
    cosine, rel = 1.0, 0.0
    for r, y in zip(refs, got):
        r = np.asarray(r, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if r.shape != y.shape:
            return {"status": "failed", "metric": metric, "reason": f"output of {y.size} values, expected {r.size}"}
        if not np.isfinite(y).all():
            return {"status": "failed", "metric": metric, "reason": "non-finite values in the output"}
        nr, ny = float(np.linalg.norm(r)), float(np.linalg.norm(y))
        cos = float(r @ y / (nr * ny)) if nr > 0 and ny > 0 else (1.0 if nr == ny else 0.0)
        cosine = min(cosine, cos)
        rel = max(rel, float(np.linalg.norm(y - r)) / nr if nr > 0 else (0.0 if ny == 0 else float("inf")))
    ok = cosine >= limits["min_cosine"] and rel <= limits["max_rel_error"]
    return {"status": "passed" if ok else "failed", "metric": metric,
            "cosine": cosine, "rel_error": rel, **limits}


def quantized_parity_error(parity: dict[str, Any]) -> str:
    if "reason" in parity:
        return f"int8 parity check failed: {parity['reason']}"
    return (f"int8 parity check failed: cosine {parity['cosine']:.5f} (needs >= {parity['min_cosine']}), "
            f"relative error {parity['rel_error']:.4f} (needs <= {parity['max_rel_error']})")
