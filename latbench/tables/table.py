"""Latency lookup tables: storage, journal, provenance checks.

A table lives in a directory (default ``tables/<device>/<space>-r<resolution>/``):

- ``blocks.csv``   one row per block configuration: key, kind, configuration fields, statistics in ms;
- ``ops.csv``      per-op rows: block key, op type, node name, median ms, share of the block;
- ``models.csv``   whole models measured end to end (overhead calibration and validation);
- ``meta.json``    device provenance, runtime versions, latbench version, space digest, settings,
                   the overhead model, dates;
- ``journal.sqlite`` the append-only record of every measurement as it was taken (raw samples
                   included). The CSVs are derived from it and rewritten atomically, so a killed
                   build loses nothing and the table is never half-written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import latbench
from latbench.blocks.configs import BlockConfig
from latbench.core.errors import UsageError
from latbench.core.fileio import atomic_write_json, atomic_write_text
from latbench.core.text import first_line
from latbench.measuring.measurement import Measurement
from latbench.space import SearchSpace

SCHEMA_VERSION = 2
#: The latency an estimate uses, and how the entry's rounds agreed on it (see measuring/consensus.py).
CONSENSUS_COLUMNS = ["latency_ms", "raw_latency_ms", "consensus", "agreement", "round_spread", "rounds"]
#: Spread statistics of the pooled samples of every round.
STAT_COLUMNS = ["median_ms", "mean_ms", "std_ms", "p5_ms", "p95_ms", "iqr_ms", "n", "ci_rel"]
FIELD_COLUMNS = ["resolution", "stage", "width", "expansion", "width_in", "width_out", "channels", "height",
                 "num_classes", "name"]
BLOCK_COLUMNS = (["key", "kind", *FIELD_COLUMNS, "input_shape", "params", "macs", *CONSENSUS_COLUMNS,
                  "trend_ratio", "flags", *STAT_COLUMNS, "session_ms", "first_inference_ms", "content_hash",
                  "measured_at", "warnings"])
OP_COLUMNS = ["block_key", "op_type", "node_name", "median_ms", "share"]
MODEL_COLUMNS = ["name", "key", "role", "params", "macs", *CONSENSUS_COLUMNS, "flags", *STAT_COLUMNS,
                 "content_hash", "measured_at", "arch"]

#: MES's default latency unit: MobileNetV2-1.0 measured whole in the same table (a space build
#: measures it; MES reads it).
REFERENCE_MODEL = "mobilenetv2_100"
REFERENCE_RESOLUTION = 224
REFERENCE_KEY = f"model-{REFERENCE_MODEL}-r{REFERENCE_RESOLUTION}"

# Provenance fields that must match for a table to describe the device it is used with.
PROVENANCE_KEYS = ["device_kind", "device_model", "soc", "os", "os_build", "runtime", "runtime_version",
                   "threads", "core_mask", "precision"]


def default_table_dir(device_id: str, space_name: str, resolution: int, root: str | Path = "tables") -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device_id)
    return Path(root) / safe / f"{space_name}-r{resolution}"


def op_rows(key: str, m: Measurement) -> list[dict[str, Any]]:
    total = sum(op.median_ms for op in m.per_op) or math.nan
    return [
        {"block_key": key, "op_type": op.op_type, "node_name": op.node_name, "median_ms": op.median_ms,
         "share": op.median_ms / total}
        for op in m.per_op
    ]


@dataclass
class LatencyTable:
    """Per-block latencies of one device, plus how to turn their sum into a model estimate."""

    blocks: pd.DataFrame
    ops: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=OP_COLUMNS))
    models: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=MODEL_COLUMNS))
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # -- access --------------------------------------------------------------------------------
    @property
    def device(self) -> dict[str, Any]:
        return self.meta.get("device", {})

    @property
    def overhead(self) -> dict[str, Any]:
        return self.meta.get("overhead") or {}

    def latency_ms(self) -> dict[str, float]:
        """key -> the latency estimates use (the consensus of the entry's rounds)."""
        return dict(zip(self.blocks["key"], self.blocks["latency_ms"].astype(float)))

    def flagged(self) -> dict[str, str]:
        """key -> flags ("no-consensus", "implausible") of entries whose latency is in doubt."""
        if "flags" not in self.blocks.columns:
            return {}
        return {k: f for k, f in zip(self.blocks["key"], self.blocks["flags"]) if isinstance(f, str) and f}

    def has(self, key: str) -> bool:
        return key in set(self.blocks["key"])

    def missing(self, keys: Iterable[str]) -> list[str]:
        have = set(self.blocks["key"])
        return sorted({k for k in keys if k not in have})

    def space(self, fallback: bool = False) -> SearchSpace:
        """The search space the table was built for (from meta.json). Without one: the default
        space with `fallback`, else a one-line error saying how to build a space table."""
        definition = (self.meta.get("space") or {}).get("definition")
        if definition:
            return SearchSpace.from_dict(definition, source=f"{self.label()}/meta.json")
        if fallback:
            return SearchSpace.default()
        raise UsageError(f"table {self.label()} was not built for a search space; build it with --space")

    def label(self) -> str:
        return str(self.path) if self.path else self.meta.get("name", "<table>")

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path:
        """Write every file atomically; meta.json last, so a complete meta means complete CSVs."""
        path = Path(path or self.path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "blocks.csv", self.blocks.reindex(columns=BLOCK_COLUMNS).to_csv(index=False))
        atomic_write_text(path / "ops.csv", self.ops.reindex(columns=OP_COLUMNS).to_csv(index=False))
        atomic_write_text(path / "models.csv", self.models.reindex(columns=MODEL_COLUMNS).to_csv(index=False))
        meta = dict(self.meta)
        meta["schema_version"] = SCHEMA_VERSION
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_json(path / "meta.json", meta)
        self.meta, self.path = meta, path
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if path.is_file() and path.name in ("blocks.csv", "meta.json"):
            path = path.parent
        if not (path / "meta.json").is_file() or not (path / "blocks.csv").is_file():
            raise UsageError(f"{path} is not a latency table (no meta.json/blocks.csv); build one with `latbench lut build`")
        try:
            meta = json.loads((path / "meta.json").read_text())
            blocks = pd.read_csv(path / "blocks.csv")
            ops = pd.read_csv(path / "ops.csv") if (path / "ops.csv").is_file() else pd.DataFrame(columns=OP_COLUMNS)
            models = (pd.read_csv(path / "models.csv") if (path / "models.csv").is_file()
                      else pd.DataFrame(columns=MODEL_COLUMNS))
        except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise UsageError(f"latency table {path} is corrupt: {first_line(exc)}") from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise UsageError(f"latency table {path} has schema {meta.get('schema_version')}, "
                             f"this latbench reads {SCHEMA_VERSION}; rebuild it with `latbench lut build --force`")
        missing = [c for c in ("key", "kind", "latency_ms") if c not in blocks.columns]
        if missing:
            raise UsageError(f"latency table {path}: blocks.csv lacks column {missing[0]!r}")
        return cls(blocks, ops, models, meta, path)

    # -- provenance ----------------------------------------------------------------------------
    def provenance_diff(self, current: dict[str, Any]) -> list[str]:
        """What differs between the table's device provenance and `current` (field: table -> now),
        the latbench version included."""
        diffs = device_diff(self.device, current)
        if self.meta.get("latbench_version") != latbench.__version__:
            diffs.append(f"latbench_version: {self.meta.get('latbench_version')!r} -> {latbench.__version__!r}")
        return diffs

    def check_provenance(self, current: dict[str, Any], strict: bool = False) -> list[str]:
        """Warn (or, strict, raise) when the table was measured on another device/runtime."""
        diffs = self.provenance_diff(current)
        if diffs and strict:
            raise UsageError(f"table {self.label()} is stale for this device ({'; '.join(diffs)}); "
                             "rebuild it with `latbench lut build --force` or drop --strict")
        return diffs


def device_diff(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Provenance fields that differ between two device descriptions ("field: recorded -> current");
    only fields both sides know are compared."""
    return [f"{k}: {recorded[k]!r} -> {current[k]!r}" for k in PROVENANCE_KEYS
            if k in recorded and k in current and recorded[k] != current[k]]


def row_config(row: dict[str, Any]) -> BlockConfig:
    """Rebuild the BlockConfig of a blocks.csv row (pandas gives NaN for unused field columns)."""
    from latbench.blocks.configs import BLOCK_KINDS, config_from_fields

    cls = BLOCK_KINDS[row["kind"]]
    wanted = {f for f in cls.__dataclass_fields__}
    fields: dict[str, Any] = {"kind": row["kind"]}
    for k in wanted:
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        fields[k] = int(v) if isinstance(v, float) else v
    return config_from_fields(fields)
