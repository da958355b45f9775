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
import sqlite3
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import latbench
from latbench.blocks import BlockConfig
from latbench.errors import UsageError
from latbench.fileio import atomic_write_json, atomic_write_text
from latbench.measurement import Measurement, merge_measurements

SCHEMA_VERSION = 1
STAT_COLUMNS = ["median_ms", "raw_median_ms", "mean_ms", "std_ms", "p5_ms", "p95_ms", "iqr_ms", "n", "ci_rel"]
FIELD_COLUMNS = ["resolution", "stage", "width", "expansion", "width_in", "width_out", "channels", "height",
                 "num_classes", "name"]
BLOCK_COLUMNS = (["key", "kind", *FIELD_COLUMNS, "input_shape", "params", *STAT_COLUMNS, "rounds",
                  "session_ms", "first_inference_ms", "content_hash", "measured_at", "warnings"])
OP_COLUMNS = ["block_key", "op_type", "node_name", "median_ms", "share"]
MODEL_COLUMNS = ["name", "key", "role", "params", "macs", *STAT_COLUMNS, "content_hash", "measured_at", "arch"]

# Provenance fields that must match for a table to describe the device it is used with.
PROVENANCE_KEYS = ["device_kind", "device_model", "soc", "os", "os_build", "runtime", "runtime_version",
                   "threads", "core_mask", "precision"]


def default_table_dir(device_id: str, space_name: str, resolution: int, root: str | Path = "tables") -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device_id)
    return Path(root) / safe / f"{space_name}-r{resolution}"


class Journal:
    """Append-only SQLite record of measurements; every row is committed as it is taken.

    One row per (key, round). SQLite's journaling makes each commit atomic, so a SIGKILL at any
    point leaves either the whole row or none of it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS measurements (
                key TEXT NOT NULL, round INTEGER NOT NULL, role TEXT NOT NULL,
                fields TEXT NOT NULL, measurement TEXT NOT NULL, content_hash TEXT,
                measured_at REAL NOT NULL, PRIMARY KEY (key, round));
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, key: str, round_: int, role: str, fields: dict, m: Measurement, content_hash: str | None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, round_, role, json.dumps(fields, default=str), json.dumps(m.to_dict()), content_hash, time.time()),
        )
        self.db.commit()

    def rounds_done(self, role: str | None = None) -> dict[str, set[int]]:
        q = "SELECT key, round FROM measurements" + (" WHERE role = ?" if role else "")
        out: dict[str, set[int]] = {}
        for key, rnd in self.db.execute(q, (role,) if role else ()):
            out.setdefault(key, set()).add(rnd)
        return out

    def measurements(self, role: str | None = None) -> dict[str, tuple[dict, list[Measurement], str | None]]:
        """key -> (fields, measurements of every round, content hash)."""
        q = "SELECT key, fields, measurement, content_hash FROM measurements"
        q += (" WHERE role = ?" if role else "") + " ORDER BY key, round"
        out: dict[str, tuple[dict, list[Measurement], str | None]] = {}
        for key, fields, mj, ch in self.db.execute(q, (role,) if role else ()):
            entry = out.setdefault(key, (json.loads(fields), [], ch))
            entry[1].append(Measurement.from_dict(json.loads(mj)))
        return out

    def forget(self, keys: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM measurements WHERE key = ?", [(k,) for k in keys])
        self.db.commit()

    def get_meta(self, name: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, name: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value, default=str)))
        self.db.commit()


def rounds_stats(ms: list[Measurement], anchor_reference_ms: float | None = None) -> dict[str, Any]:
    """Statistics of one artifact measured in several interleaved rounds.

    The latency (`median_ms`) is the median of the per-round medians: every round counts once,
    however many samples its adaptive sampling took (a disturbed round takes *more*, so pooling
    would let it dominate), and with three or more rounds one disturbed round is outvoted. The
    spread figures (std, p5, p95, IQR, n, CI) come from the pooled samples.

    With `anchor_reference_ms`, each round median is first normalised by the anchor's speed when
    it was taken (recorded as provenance["anchor_ms"]): median * reference / anchor. A shared host
    drifts by several percent over minutes; this puts every measurement on one time base.
    """
    stats = merge_measurements(ms).stats()

    def normalised(m: Measurement) -> float:
        anchor = m.provenance.get("anchor_ms")
        return m.median * anchor_reference_ms / anchor if anchor and anchor_reference_ms else m.median

    stats["median_ms"] = statistics.median(normalised(m) for m in ms)
    stats["raw_median_ms"] = statistics.median(m.median for m in ms)
    return stats


def block_row(config_fields: dict, key: str, ms: list[Measurement], content_hash: str | None,
              params: int | None, input_shape: tuple[int, ...] | None,
              anchor_reference_ms: float | None = None) -> dict[str, Any]:
    m = merge_measurements(ms)
    row: dict[str, Any] = {"key": key, "kind": config_fields.get("kind")}
    for col in FIELD_COLUMNS:
        row[col] = config_fields.get(col)
    row["input_shape"] = "x".join(map(str, input_shape)) if input_shape else None
    row["params"] = params
    row.update(rounds_stats(ms, anchor_reference_ms))
    row["rounds"] = len(ms)
    row["session_ms"] = m.session_ms
    row["first_inference_ms"] = m.first_inference_ms
    row["content_hash"] = content_hash
    row["measured_at"] = m.provenance.get("measured_at")
    row["warnings"] = "; ".join(m.warnings) or None
    return row


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

    def median_ms(self) -> dict[str, float]:
        return dict(zip(self.blocks["key"], self.blocks["median_ms"].astype(float)))

    def has(self, key: str) -> bool:
        return key in set(self.blocks["key"])

    def missing(self, keys: Iterable[str]) -> list[str]:
        have = set(self.blocks["key"])
        return sorted({k for k in keys if k not in have})

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
            raise UsageError(f"latency table {path} is corrupt: {str(exc).splitlines()[0]}") from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise UsageError(f"latency table {path} has schema {meta.get('schema_version')}, "
                             f"this latbench reads {SCHEMA_VERSION}; rebuild it with `latbench lut build --force`")
        missing = [c for c in ("key", "kind", "median_ms") if c not in blocks.columns]
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
    from latbench.blocks import BLOCK_KINDS, config_from_fields

    cls = BLOCK_KINDS[row["kind"]]
    wanted = {f for f in cls.__dataclass_fields__}
    fields: dict[str, Any] = {"kind": row["kind"]}
    for k in wanted:
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        fields[k] = int(v) if isinstance(v, float) else v
    return config_from_fields(fields)
