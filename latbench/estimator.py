"""Latency estimates of whole models from a per-block LatencyTable.

The plain lookup-table estimate sums the isolated block latencies. Each isolated measurement,
however, also pays the fixed per-inference cost (the call into the runtime, binding the input,
copying the output out) that the whole model pays only once. The table therefore also holds
"empty" models, one per block input shape, that time exactly that overhead. The estimate is

    raw  = sum_k count_k * (t_k - e(shape_k)) + e(model input shape)
    est  = scale * raw + intercept

`scale` is fitted at build time on a few whole models measured end to end (relative least
squares), absorbing what isolated blocks still miss (cross-block fusion, cache effects);
`intercept` stays 0 unless a table was fitted with one. Both the method and the fitted constants are stored in the table's
meta.json and reported with every estimate.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from latbench.blocks import BlockConfig, EmptyConfig
from latbench.errors import UsageError
from latbench.tables import LatencyTable


@dataclass
class BlockEstimate:
    key: str
    kind: str
    group: str  # stem, stage1..stage4, head, model
    count: int
    block_ms: float  # the table's median for one isolated run
    overhead_ms: float  # per-inference overhead subtracted per occurrence
    total_ms: float  # count * (block_ms - overhead_ms), before scale/intercept


@dataclass
class Estimate:
    name: str
    latency_ms: float
    plain_sum_ms: float
    blocks: list[BlockEstimate] = field(default_factory=list)
    input_overhead_ms: float = 0.0
    scale: float = 1.0
    intercept_ms: float = 0.0
    method: str = ""
    calibrated: bool = False
    #: Why the estimate may be off: an uncalibrated table, table entries flagged as doubtful.
    warnings: list[str] = field(default_factory=list)

    def per_group(self) -> dict[str, float]:
        """Estimated ms per stem/stage/head, scaled so the groups add up to latency_ms
        (the once-per-inference overhead is spread in proportion)."""
        raw = sum(b.total_ms for b in self.blocks)
        out: dict[str, float] = {}
        for b in self.blocks:
            out[b.group] = out.get(b.group, 0.0) + b.total_ms
        if raw > 0:
            out = {k: v / raw * self.latency_ms for k, v in out.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_group_ms"] = self.per_group()
        return d


def block_group(config: BlockConfig) -> str:
    kind = config.kind
    if kind in ("stem", "head", "model"):
        return kind
    stage = getattr(config, "stage", None)
    if kind == "embed":  # an embedding produces the next stage's input
        return f"stage{stage + 1}"
    if kind == "attndown":
        return "stage4"
    return f"stage{stage}"


def fit_calibration(raw: list[float], measured: list[float], intercept: bool = False) -> tuple[float, float]:
    """Scale (and optionally intercept) minimising the squared *relative* error of scale*raw + intercept.

    Scale-only is the default: the empty models already account for the fixed overhead, and a
    second free parameter over a handful of noisy calibration models overfits.
    """
    if len(raw) != len(measured) or not raw:
        return 1.0, 0.0
    # Weights 1/y^2 turn absolute residuals into relative ones.
    w = [1.0 / (y * y) for y in measured]
    sw = sum(w)
    sx = sum(wi * x for wi, x in zip(w, raw))
    sy = sum(wi * y for wi, y in zip(w, measured))
    sxx = sum(wi * x * x for wi, x in zip(w, raw))
    sxy = sum(wi * x * y for wi, x, y in zip(w, raw, measured))
    if not intercept or len(raw) < 3:
        return (sxy / sxx if sxx else 1.0), 0.0
    det = sw * sxx - sx * sx
    if abs(det) < 1e-12 * max(1.0, sw * sxx):
        return (sxy / sxx if sxx else 1.0), 0.0
    scale = (sw * sxy - sx * sy) / det
    return scale, (sy - scale * sx) / sw


class LatencyEstimator:
    """Estimate model latency from a table. Construct once, call `estimate` per candidate."""

    def __init__(self, table: LatencyTable):
        self.table = table
        self.ms = table.latency_ms()
        self.flagged = table.flagged()
        ov = table.overhead
        self.use_overhead = bool(ov.get("empty_models", True)) and any(k.startswith("empty-") for k in self.ms)
        self.scale = float(ov.get("scale", 1.0))
        self.intercept = float(ov.get("intercept_ms", 0.0))
        self.calibrated = bool(ov.get("calibrated", bool(ov.get("calibrated_on"))))

    def _empty_key(self, resolution: int, shape: tuple[int, ...]) -> str:
        return EmptyConfig.for_shape(resolution, shape).key

    def required_keys(self, blocks: list[BlockConfig]) -> list[str]:
        keys = {b.key for b in blocks}
        if self.use_overhead:
            keys |= {self._empty_key(b.resolution, b.input_shape) for b in blocks}
            keys.add(self._empty_key(blocks[0].resolution, (1, 3, blocks[0].resolution, blocks[0].resolution)))
        return sorted(keys)

    def check_covered(self, name: str, blocks: list[BlockConfig]) -> None:
        missing = [k for k in self.required_keys(blocks) if k not in self.ms]
        if missing:
            shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
            raise UsageError(
                f"table {self.table.label()} lacks {len(missing)} block(s) needed by {name}: {shown}; "
                f"fill them with `latbench lut build --device {self.table.meta.get('device_id', 'ID')} "
                f"--model/--arch {name} --out {self.table.label()}`"
            )

    def raw(self, blocks: list[BlockConfig]) -> tuple[float, float, list[BlockEstimate], float]:
        """(raw estimate, plain sum, per-block rows, input overhead) before calibration."""
        counts = Counter(blocks)
        rows = []
        plain = 0.0
        for config, n in counts.items():
            t = self.ms[config.key]
            e = self.ms[self._empty_key(config.resolution, config.input_shape)] if self.use_overhead else 0.0
            plain += n * t
            rows.append(BlockEstimate(config.key, config.kind, block_group(config), n, t, e, n * (t - e)))
        r = blocks[0].resolution
        e_in = self.ms[self._empty_key(r, (1, 3, r, r))] if self.use_overhead else 0.0
        return sum(b.total_ms for b in rows) + e_in, plain, rows, e_in

    def estimate_blocks(self, name: str, blocks: list[BlockConfig]) -> Estimate:
        if not blocks:
            raise UsageError(f"{name}: nothing to estimate (no blocks)")
        self.check_covered(name, blocks)
        raw, plain, rows, e_in = self.raw(blocks)
        warnings = self.doubtful(self.required_keys(blocks))
        if all(b.kind == "model" for b in blocks):
            # Measured whole: nothing was summed, so neither overhead nor calibration applies.
            return Estimate(name, plain, plain, rows, 0.0, 1.0, 0.0, "whole model measured end to end", True,
                            warnings)
        est = self.scale * raw + self.intercept
        method = "sum(block - empty) + empty(input)" if self.use_overhead else "plain sum"
        if self.calibrated:
            method += f", calibrated x{self.scale:.4f}" + (f" {self.intercept:+.4f} ms" if self.intercept else "")
        else:
            method += ", UNCALIBRATED"
            warnings.insert(0, f"table {self.table.label()} is uncalibrated: no whole model was measured end to end "
                               "with it, so what isolated blocks miss (fusion, cache effects; typically -15..+15 %) "
                               "is not corrected; rebuild it with --calibrate N (space builds) or --model/--arch")
        if not math.isfinite(est) or est <= 0:
            est = plain
        return Estimate(name, est, plain, rows, e_in, self.scale, self.intercept, method, self.calibrated, warnings)

    def doubtful(self, keys: list[str]) -> list[str]:
        """A warning naming the table entries in `keys` whose latency is flagged as doubtful."""
        bad = [f"{k} ({self.flagged[k]})" for k in keys if k in self.flagged]
        if not bad:
            return []
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        return [f"{len(bad)} table entr{'y' if len(bad) == 1 else 'ies'} used here "
                f"{'is' if len(bad) == 1 else 'are'} doubtful: {shown}; re-measure with "
                f"`latbench lut check {self.table.label()} --device {self.table.meta.get('device_id') or 'ID'} --fix`"]

    def estimate(self, candidate) -> Estimate:
        """Estimate a `latbench.candidates.Candidate`."""
        return self.estimate_blocks(candidate.name, candidate.blocks())
