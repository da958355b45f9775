"""Mobile Efficiency Score (EfficientFormerV2, Sec. 4).

    MES = score * prod_i (M_i / U_i) ** (-alpha_i)

over a set of metrics M_i (by default model size in parameters and latency in ms) with units U_i
and exponents alpha_i. A model exactly at every unit scores `score` (100); halving its latency
doubles the score when alpha_latency = 1.

Defaults (the paper's exponents could not be confirmed, so they are configurable and every output
prints the constants it used):

- size:    value = parameter count, U = 3M parameters (MobileNetV2's size), alpha = 0.5;
- latency: value = latency in ms, U = MobileNetV2-1.0's latency on the *same* table/device (table
           key ``model-mobilenetv2_100-r224``), alpha = 1.0. Normalising by a reference model measured
           on the same device makes scores comparable across devices; the paper's fixed 1 ms unit
           is ``unit: 1ms`` (or ``--latency-unit 1ms``).

A metric is (name, value getter, unit, alpha). Getters are built-in (``params``, ``macs``,
``latency``, ``weights_mb`` = fp32 weight bytes / 1e6, an approximation of the model file size,
``model_mb`` = the size of the candidate's model file as exported for the table's device and
precision, in 10^6 bytes; only where models are exported, as in ``mes report``) or
``column:NAME``, a column of a candidates' metrics CSV (peak memory, file size, energy, ...).

int8 tables: a quantized model ships at about a byte per weight plus what quantization adds (per
channel scales, int32 biases, ops kept in float; latbench's int8 LiteRT files: S0 4.66 MB for
3.6M parameters, MobileNetV2 4.11 MB for 3.5M, so not one factor of the parameter count). For
an int8 table the default size metric is therefore the quantized model's file size, ``model_mb``,
with the paper's 3M-parameter unit carried to one byte per weight: U = 3 MB
(`for_precision`; a --mes-config of one's own is left as written).

MES config file (YAML; every key optional, entries merge over the defaults; alpha 0 drops a term):

    score: 100
    metrics:
      size:    {value: params,  unit: 3M,        alpha: 0.5}
      latency: {value: latency, unit: reference, alpha: 1.0}
      memory:  {value: "column:peak_mem_mb", unit: 20, alpha: 0.25, unit_label: MB}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from latbench.core.errors import UsageError
from latbench.core.text import first_line, shown
from latbench.core.userfiles import check_keys
from latbench.tables.table import REFERENCE_KEY, REFERENCE_MODEL, REFERENCE_RESOLUTION

REFERENCE = "reference"  # the latency unit spelled in configs/CLI
#: The getter of an int8 table's size metric: the model file, in MB.
MODEL_MB = "model_mb"
BUILTIN_GETTERS = {"params": "parameters", "macs": "MACs", "latency": "ms", "weights_mb": "MB", MODEL_MB: "MB"}
#: The int8 size metric: the quantized model file in MB against 3M weights at one byte each.
INT8_SIZE_UNIT_MB = 3.0
COLUMN_PREFIX = "column:"
DEFAULT_SCORE = 100.0

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


def parse_count(value: Any, what: str) -> float:
    """A positive number, with an optional k/M/G suffix ("3M", "2.5e6", 3000000)."""
    if isinstance(value, bool):
        raise UsageError(f"{what} must be a positive number, got {shown(value)}")
    if isinstance(value, int | float):
        x = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgG]?)\s*", value)
        try:
            x = float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0) if m else math.nan
        except ValueError:
            x = math.nan
    else:
        x = math.nan
    if not math.isfinite(x) or x <= 0:
        raise UsageError(f"{what} must be a positive number (e.g. 3M or 3000000), got {shown(value)}")
    return x


def parse_ms(value: Any, what: str) -> float:
    """A positive duration in ms: 1.5, "1.5", "1.5ms"."""
    if isinstance(value, str):
        value = value.strip().lower().removesuffix("ms").strip()
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x <= 0:
        raise UsageError(f"{what} must be a positive number of milliseconds (e.g. 1ms), got {shown(value)}")
    return x


def parse_alpha(value: Any, what: str) -> float:
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise UsageError(f"{what} must be a finite number, got {shown(value)}")
    return x


@dataclass(frozen=True)
class MetricSpec:
    """One MES term before its unit is resolved (the latency unit may name a reference model)."""

    name: str
    getter: str  # a BUILTIN_GETTERS name or "column:NAME"
    unit: float | str  # a positive number in the getter's units, or REFERENCE for latency
    alpha: float
    unit_label: str = ""

    def __post_init__(self) -> None:
        check_getter(self.getter, f"MES metric {self.name!r}")
        if isinstance(self.unit, str) and not (self.unit == REFERENCE and self.getter == "latency"):
            raise UsageError(f"MES metric {self.name!r}: unit {self.unit!r} is only valid for the latency getter")


def check_getter(getter: str, where: str) -> None:
    if getter in BUILTIN_GETTERS:
        return
    if isinstance(getter, str) and getter.startswith(COLUMN_PREFIX) and getter[len(COLUMN_PREFIX):].strip():
        return
    raise UsageError(f"{where}: value {getter!r} is not a built-in getter ({', '.join(BUILTIN_GETTERS)}) "
                     f"or 'column:NAME' of a metrics CSV")


def default_metrics() -> tuple[MetricSpec, ...]:
    return (
        MetricSpec("size", "params", 3e6, 0.5, "parameters"),
        MetricSpec("latency", "latency", REFERENCE, 1.0, "ms"),
    )


def for_precision(config: MESConfig, precision: str | None) -> MESConfig:
    """The default config as it applies to a table of artifact `precision`: for int8, size is the
    quantized model file (model_mb, U = INT8_SIZE_UNIT_MB). A config from a file is kept as written."""
    if precision != "int8" or config.source != "defaults" or config.metric("size") is None:
        return config
    return config.with_metric("size", getter=MODEL_MB, unit=INT8_SIZE_UNIT_MB,
                              unit_label="MB (int8 model file)")


@dataclass(frozen=True)
class MESConfig:
    """Which metrics, units and exponents; resolve() turns it into a usable `MES`."""

    metrics: tuple[MetricSpec, ...] = field(default_factory=default_metrics)
    score: float = DEFAULT_SCORE
    source: str = "defaults"

    def metric(self, name: str) -> MetricSpec | None:
        return next((m for m in self.metrics if m.name == name), None)

    def with_metric(self, name: str, **changes: Any) -> MESConfig:
        """A copy with one metric's fields changed (UsageError if there is no such metric)."""
        old = self.metric(name)
        if old is None:
            raise UsageError(f"MES has no metric {name!r} to change (it has {', '.join(m.name for m in self.metrics)})")
        new = replace(old, **changes)
        return replace(self, metrics=tuple(new if m.name == name else m for m in self.metrics))

    def needs_columns(self) -> list[str]:
        return [m.getter[len(COLUMN_PREFIX):] for m in self.metrics if m.getter.startswith(COLUMN_PREFIX)]

    @classmethod
    def load(cls, path: str | Path) -> MESConfig:
        from latbench.core.userfiles import read_yaml_or_json

        return cls.from_dict(read_yaml_or_json(path, "MES config"), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<mes config>") -> MESConfig:
        where = f"MES config {source}"
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a mapping with 'score' and/or 'metrics'")
        check_keys(data, {"score", "metrics"}, where)
        score = parse_alpha(data.get("score", DEFAULT_SCORE), f"{where}: score")
        if score <= 0:
            raise UsageError(f"{where}: score must be positive, got {score}")
        metrics = {m.name: m for m in default_metrics()}
        raw = data.get("metrics", {}) or {}
        if not isinstance(raw, dict):
            raise UsageError(f"{where}: 'metrics' must be a mapping of metric name -> {{value, unit, alpha}}")
        for name, entry in raw.items():
            metrics[str(name)] = _metric_from_dict(str(name), entry, metrics.get(str(name)), where)
        return cls(tuple(metrics.values()), score, source)


def _metric_from_dict(name: str, entry: Any, base: MetricSpec | None, where: str) -> MetricSpec:
    mw = f"{where}: metric {name!r}"
    if not isinstance(entry, dict):
        raise UsageError(f"{mw} must be a mapping with value/unit/alpha")
    check_keys(entry, {"value", "unit", "alpha", "unit_label"}, mw)
    if base is None:
        missing = [k for k in ("value", "unit", "alpha") if k not in entry]
        if missing:
            raise UsageError(f"{mw}: missing key {missing[0]!r} (a new metric needs value, unit and alpha)")
    getter = str(entry.get("value", base.getter if base else ""))
    check_getter(getter, mw)
    unit_raw = entry.get("unit", base.unit if base else None)
    if getter == "latency":
        unit: float | str = REFERENCE if unit_raw == REFERENCE else parse_ms(unit_raw, f"{mw}: unit")
    else:
        unit = parse_count(unit_raw, f"{mw}: unit")
    alpha = parse_alpha(entry.get("alpha", base.alpha if base else None), f"{mw}: alpha")
    default_label = BUILTIN_GETTERS.get(getter) or getter[len(COLUMN_PREFIX):]
    label = str(entry.get("unit_label", base.unit_label if base and base.getter == getter else default_label))
    return MetricSpec(name, getter, unit, alpha, label)


@dataclass(frozen=True)
class ResolvedMetric:
    name: str
    getter: str
    unit: float
    alpha: float
    unit_desc: str  # how the unit was obtained, e.g. "3,000,000 parameters" or "mobilenetv2_100 on TABLE"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.getter, "unit": self.unit, "alpha": self.alpha,
                "unit_desc": self.unit_desc}


@dataclass(frozen=True)
class MES:
    """A resolved score function: every unit is a number."""

    metrics: tuple[ResolvedMetric, ...]
    score: float = DEFAULT_SCORE

    def metric(self, name: str) -> ResolvedMetric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def __call__(self, values: Mapping[str, float]) -> float:
        """MES of one candidate; `values` maps getter names ("params", "latency", "column:X") to values."""
        out = self.score
        for m in self.metrics:
            v = _value(values, m)
            out *= (v / m.unit) ** (-m.alpha)
        return out

    def arrays(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Vectorised MES (same formula, element-wise); NaN inputs give NaN."""
        out: np.ndarray | float = self.score
        for m in self.metrics:
            if m.getter not in values:
                raise UsageError(f"MES metric {m.name!r} needs {m.getter!r}, which is not available here")
            out = out * (np.asarray(values[m.getter], dtype=float) / m.unit) ** (-m.alpha)
        return np.asarray(out, dtype=float)

    def with_latency_unit(self, unit_ms: float, desc: str) -> MES:
        """The same score with another latency unit (e.g. the reference model *measured* on a device)."""
        ms = tuple(replace(m, unit=unit_ms, unit_desc=desc) if m.getter == "latency" else m for m in self.metrics)
        return replace(self, metrics=ms)

    def constants(self) -> dict[str, Any]:
        return {"score": self.score, "formula": "MES = score * prod_i (M_i / U_i)^(-alpha_i)",
                "metrics": [m.to_dict() for m in self.metrics]}

    def describe(self) -> str:
        """One line with every constant, printed by every output that shows an MES."""
        terms = "; ".join(f"{m.name}: U={_fmt_unit(m)}, alpha={m.alpha:g}" for m in self.metrics)
        return f"MES = {self.score:g} * prod (M/U)^-alpha; {terms}"


def _fmt_unit(m: ResolvedMetric) -> str:
    if m.getter == "latency":
        return f"{m.unit:.4g} ms ({m.unit_desc})" if m.unit_desc else f"{m.unit:.4g} ms"
    if m.getter == "params":
        return f"{m.unit:,.0f} params"
    return f"{m.unit:g} {m.unit_desc}".strip()


def _value(values: Mapping[str, float], m: ResolvedMetric) -> float:
    if m.getter not in values or values[m.getter] is None:
        raise UsageError(f"MES metric {m.name!r} needs a value for {m.getter!r}"
                         + (" (give --metrics CSV with that column)" if m.getter.startswith(COLUMN_PREFIX) else ""))
    v = float(values[m.getter])
    if not math.isfinite(v) or v <= 0:
        raise UsageError(f"MES metric {m.name!r}: value {shown(v)} must be a positive number")
    return v


def reference_missing_message(table_label: str, device: str | None) -> str:
    return (f"table {table_label} lacks {REFERENCE_KEY}, the default MES latency unit (MobileNetV2-1.0 on the same "
            f"device); add it with `latbench lut build --device {device or 'D'} --model {REFERENCE_MODEL} "
            f"--out {table_label}` (or pass --latency-unit 1ms for the paper's fixed unit)")


def reference_latency_ms(table) -> float:
    """MobileNetV2-1.0's latency as the table's estimator reports it (the same path every candidate
    takes, so MobileNetV2 scored against this table has a latency term of exactly 1)."""
    from latbench.blocks.configs import ModelConfig
    from latbench.estimation.estimator import LatencyEstimator

    if not table.has(REFERENCE_KEY):
        raise UsageError(reference_missing_message(table.label(), table.meta.get("device_id")))
    est = LatencyEstimator(table)
    return est.estimate_blocks(REFERENCE_MODEL, [ModelConfig(REFERENCE_RESOLUTION, REFERENCE_MODEL)]).latency_ms


def resolve(config: MESConfig, table=None) -> MES:
    """Give every unit a number; the reference latency unit is read from `table`."""
    metrics = []
    for m in config.metrics:
        if m.unit == REFERENCE:
            if table is None:
                raise UsageError("the MES latency unit 'reference' needs a latency table (or pass --latency-unit 1ms)")
            unit = reference_latency_ms(table)
            desc = f"{REFERENCE_MODEL} on {table.label()}"
        else:
            unit = float(m.unit)
            desc = ("fixed" if m.getter == "latency" else m.unit_label)
        metrics.append(ResolvedMetric(m.name, m.getter, unit, m.alpha, desc))
    return MES(tuple(metrics), config.score)


def parse_megabytes(value: Any, what: str) -> float:
    """A positive size in MB ("3", "3MB", 2.5) for a size metric read from model files: a count
    suffix (3M) would mean millions of MB, so it is refused."""
    number = re.sub(r"(?i)\s*mb$", "", value.strip()) if isinstance(value, str) else value
    if isinstance(number, str) and re.search(r"[kKmMgG]$", number):
        raise UsageError(f"{what} is in MB of the model file for an int8 table (e.g. 3 or 3MB), got {shown(value)}")
    return parse_count(number, what)


def config_with_overrides(config: MESConfig, *, latency_unit: str | None = None, size_unit: str | None = None,
                          alpha_latency: float | None = None, alpha_size: float | None = None) -> MESConfig:
    """Apply the CLI flags (which win over the config file)."""
    if latency_unit is not None:
        is_reference = isinstance(latency_unit, str) and latency_unit.strip().lower() == REFERENCE
        unit: float | str = REFERENCE if is_reference else parse_ms(
            latency_unit, "--latency-unit")
        config = config.with_metric("latency", unit=unit)
    if size_unit is not None:
        size = config.metric("size")
        in_mb = size is not None and size.getter == MODEL_MB
        config = config.with_metric("size", unit=parse_megabytes(size_unit, "--size-unit") if in_mb
                                    else parse_count(size_unit, "--size-unit"))
    if alpha_latency is not None:
        config = config.with_metric("latency", alpha=parse_alpha(alpha_latency, "--alpha-latency"))
    if alpha_size is not None:
        config = config.with_metric("size", alpha=parse_alpha(alpha_size, "--alpha-size"))
    return config


def read_metrics_csv(path: str | Path, columns: list[str]) -> dict[str, dict[str, float]]:
    """Candidates' extra metric values: a CSV with a `name` column and one column per metric."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"metrics file {path} does not exist")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UsageError(f"metrics file {path} is not a valid CSV: {first_line(exc)}") from None
    if "name" not in df.columns:
        raise UsageError(f"metrics file {path} needs a 'name' column (the candidate names)")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(f"metrics file {path} lacks column {missing[0]!r} named by the MES config")
    out: dict[str, dict[str, float]] = {}
    for row in df.to_dict("records"):
        vals = {}
        for c in columns:
            try:
                vals[COLUMN_PREFIX + c] = float(row[c])
            except (TypeError, ValueError):
                raise UsageError(f"metrics file {path}: {row['name']!r} column {c!r} is not a number: {shown(row[c])}") \
                    from None
        out[str(row["name"])] = vals
    return out
