"""The overhead model: how a table's isolated block latencies add up to a whole model.

Every isolated block measurement pays the fixed per-inference cost (the call into the runtime,
binding the input, copying the output out) that the whole model pays only once. A table
therefore also holds "empty" models, one per block input shape, that time exactly that cost:

    raw = sum_k count_k * (t_k - e(shape_k)) + e(model input shape)
    estimate = scale * raw

`scale` is fitted on whole models measured end to end during the build (relative least
squares), absorbing what isolated blocks still miss (cross-block fusion, cache effects). Only a
scale is fitted: the empty models already account for the fixed cost, and a second free
parameter over a handful of noisy calibration models overfits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from latbench.blocks.configs import BlockConfig, EmptyConfig


@dataclass
class BlockEstimate:
    """One block key's part of a sum."""

    key: str
    kind: str
    group: str  # stem, stage1..stage4, head, model
    count: int
    block_ms: float  # the table's latency for one isolated run
    overhead_ms: float  # per-inference overhead subtracted per occurrence
    total_ms: float  # count * (block_ms - overhead_ms), before the scale


def block_group(config: BlockConfig) -> str:
    """Which part of the model a block belongs to: stem, stage1..stage4, head (or model)."""
    kind = config.kind
    if kind in ("stem", "head", "model"):
        return kind
    stage = getattr(config, "stage", None)
    if kind == "embed":  # an embedding produces the next stage's input
        return f"stage{stage + 1}"
    if kind == "attndown":
        return "stage4"
    return f"stage{stage}"


def empty_key(resolution: int, shape: tuple[int, ...]) -> str:
    return EmptyConfig.for_shape(resolution, shape).key


class OverheadModel:
    """The raw (uncalibrated) sum over a table's latencies, overhead subtracted when the table has
    empty models."""

    def __init__(self, latency_ms: Mapping[str, float], empty_models: bool = True) -> None:
        self.ms = dict(latency_ms)
        self.use_overhead = empty_models and any(k.startswith("empty-") for k in self.ms)

    def required_keys(self, blocks: Sequence[BlockConfig]) -> list[str]:
        keys = {b.key for b in blocks}
        if self.use_overhead:
            r = blocks[0].resolution
            keys |= {empty_key(b.resolution, b.input_shape) for b in blocks}
            keys.add(empty_key(r, (1, 3, r, r)))
        return sorted(keys)

    def covers(self, blocks: Sequence[BlockConfig]) -> bool:
        return all(k in self.ms for k in self.required_keys(blocks))

    def raw(self, blocks: Sequence[BlockConfig]) -> tuple[float, float, list[BlockEstimate], float]:
        """(raw estimate, plain sum, per-block rows, input overhead)."""
        rows = []
        plain = 0.0
        for config, n in Counter(blocks).items():
            t = self.ms[config.key]
            e = self.ms[empty_key(config.resolution, config.input_shape)] if self.use_overhead else 0.0
            plain += n * t
            rows.append(BlockEstimate(config.key, config.kind, block_group(config), n, t, e, n * (t - e)))
        r = blocks[0].resolution
        e_in = self.ms[empty_key(r, (1, 3, r, r))] if self.use_overhead else 0.0
        return sum(b.total_ms for b in rows) + e_in, plain, rows, e_in


def fit_scale(raw: Sequence[float], measured: Sequence[float]) -> float:
    """The scale minimising the squared *relative* error of scale * raw against `measured`."""
    if len(raw) != len(measured) or not raw:
        return 1.0
    # Weights 1/y^2 turn absolute residuals into relative ones.
    sxx = sum(x * x / (y * y) for x, y in zip(raw, measured))
    sxy = sum(x / y for x, y in zip(raw, measured))
    return sxy / sxx if sxx else 1.0
