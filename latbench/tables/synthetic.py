"""A complete, deterministic, *synthetic* table for tests and demos: never a measurement.

Its meta.json says `synthetic: true`, and every report built on it says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from latbench.blocks.configs import (
    AttnConfig,
    BlockConfig,
    EmptyConfig,
    ModelConfig,
    overhead_blocks,
    space_blocks,
)
from latbench.space import SearchSpace
from latbench.space import arch as ef
from latbench.tables.table import BLOCK_COLUMNS, REFERENCE_MODEL, REFERENCE_RESOLUTION, LatencyTable


def _synthetic_ms(config: BlockConfig) -> float:
    """A deterministic made-up cost: a fixed 5 us plus ~MACs at 0.01 ns per MAC (params x output pixels,
    plus attention matmuls), so bigger blocks cost more, roughly like a real device."""
    if isinstance(config, EmptyConfig):
        return 0.004 + 1e-8 * config.channels * config.map_height * config.map_width
    _, _, h, w = config.input_shape
    pixels = h * w
    if config.kind in ("stem", "embed", "attndown"):
        pixels //= 4  # stride 2
    if config.kind == "head":
        pixels = 1
    macs = config.params() * pixels
    if isinstance(config, AttnConfig):
        n = pixels // 4 if config.strided else pixels
        macs += n * n * ef.ATTN_HEADS * ef.ATTN_KEY_DIM * (1 + ef.ATTN_RATIO)
    return 0.005 + 1e-8 * macs


def synthetic_table(space: SearchSpace | None = None, resolution: int = 224, *,
                    reference_ms: float | None = 3.0, scale: float = 1.0,
                    attention_scale: float | None = None,
                    cost: Callable[[BlockConfig], float] = _synthetic_ms) -> LatencyTable:
    """A complete, deterministic, *synthetic* table for tests and demos (never a measurement): every
    block of `space`, the empty models, and (unless reference_ms is None) MobileNetV2's whole-model row."""

    space = space or SearchSpace.default()
    configs = space_blocks(space, resolution)
    r = resolution
    rows: list[dict[str, Any]] = []
    for c in configs + overhead_blocks(configs) + [EmptyConfig(r, 3, r, r)]:
        rows.append({"key": c.key, "kind": c.kind, **{k: v for k, v in c.fields().items() if k != "kind"},
                     "params": c.params(), "latency_ms": cost(c), "consensus": True})
    if reference_ms is not None:
        ref = ModelConfig(REFERENCE_RESOLUTION, REFERENCE_MODEL)
        rows.append({"key": ref.key, "kind": "model", "name": REFERENCE_MODEL, "resolution": REFERENCE_RESOLUTION,
                     "latency_ms": reference_ms, "consensus": True})
    rows = list({row["key"]: row for row in rows}.values())
    meta = {"name": "synthetic", "device_id": "synthetic", "synthetic": True, "resolution": r,
            "device": {"device_kind": "synthetic", "runtime": "none (made-up costs)"},
            "space": {"name": space.name, "digest": space.digest(), "definition": space.to_dict()},
            "overhead": {"empty_models": True, "scale": scale, "calibrated": True,
                         "scales": {"attention": scale if attention_scale is None else attention_scale, "rest": scale},
                         "calibrated_on": ["synthetic"]}}
    return LatencyTable(pd.DataFrame(rows, columns=BLOCK_COLUMNS), meta=meta)
