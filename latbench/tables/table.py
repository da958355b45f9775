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

import hashlib
import json
import math
import os
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
CONSENSUS_COLUMNS = ["latency_ms", "typical_ms", "raw_latency_ms", "consensus", "agreement", "round_spread", "rounds"]
#: Spread statistics of the pooled samples of every round.
STAT_COLUMNS = ["median_ms", "mean_ms", "std_ms", "p5_ms", "p95_ms", "iqr_ms", "n", "ci_rel"]
#: Whether an entry was measured on the device or predicted from other devices' tables (an adapted
#: table, latbench.tables.adapt), and a predicted entry's one-sigma uncertainty in %. Tables
#: written before adapted tables existed lack both columns: every entry there is measured.
ENTRY_SOURCE_COLUMNS = ["source", "uncertainty_pct"]
MEASURED, PREDICTED = "measured", "predicted"
FIELD_COLUMNS = ["resolution", "stage", "width", "expansion", "width_in", "width_out", "channels", "map_height",
                 "map_width", "num_classes", "name"]
BLOCK_COLUMNS = (["key", "kind", *FIELD_COLUMNS, "input_shape", "params", "macs", *CONSENSUS_COLUMNS,
                  "trend_ratio", "flags", *STAT_COLUMNS, "session_ms", "first_inference_ms", "content_hash",
                  "measured_at", "warnings", *ENTRY_SOURCE_COLUMNS])
OP_COLUMNS = ["block_key", "op_type", "node_name", "median_ms", "share"]
MODEL_COLUMNS = ["name", "key", "role", "params", "macs", *CONSENSUS_COLUMNS, "flags", *STAT_COLUMNS,
                 "content_hash", "measured_at", "arch"]

#: MES's default latency unit: MobileNetV2-1.0 measured whole in the same table (a space build
#: measures it; MES reads it).
REFERENCE_MODEL = "mobilenetv2_100"
REFERENCE_RESOLUTION = 224
REFERENCE_KEY = f"model-{REFERENCE_MODEL}-r{REFERENCE_RESOLUTION}"

# Provenance fields that must match for a table to describe the device it is used with. The
# backend a runtime dispatches to is part of it: LiteRT's XNNPACK delegate or built-in kernels,
# Core ML's and AI Hub's compute units: one file, timed on each, is another latency.
PROVENANCE_KEYS = ["device_kind", "device_model", "soc", "os", "os_build", "runtime", "runtime_version",
                   "execution_provider", "xnnpack", "compute_units", "threads", "core_mask", "precision"]


def tables_root() -> Path:
    """Where tables live by default: $LATBENCH_TABLES, else ./tables."""
    return Path(os.environ.get("LATBENCH_TABLES", "tables"))


def find_table(path_or_name: str | Path) -> Path:
    """A table's directory from a path, or from a name under the tables root: "cpu" (the device's
    only table), "cpu/efficientformerv2-r224". One-line UsageError listing the known tables."""
    if not isinstance(path_or_name, (str, Path)) or not str(path_or_name).strip():
        raise UsageError(f"a latency table is named by its directory or a name under {tables_root()}/, "
                         f"got {path_or_name!r}")
    path = Path(path_or_name)
    if path.exists():
        return path
    root = tables_root()
    candidate = root / path
    if (candidate / "meta.json").is_file():
        return candidate
    if candidate.is_dir():
        inside = sorted(p for p in candidate.iterdir() if (p / "meta.json").is_file())
        if len(inside) == 1:
            return inside[0]
        if inside:
            raise UsageError(f"{candidate} holds several tables ({', '.join(p.name for p in inside)}); name one")
    known = sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/meta.json")) if root.is_dir() else []
    raise UsageError(f"no latency table {str(path_or_name)!r}: give its directory or a name under {root}/ "
                     f"({', '.join(known) or 'none built yet'}); build one with `latbench lut build`")


def default_table_dir(device_id: str, space_name: str, resolution: int, root: str | Path = "tables",
                      precision: str | None = None) -> Path:
    """tables/<device>/<space>-r<resolution>, with -<precision> for a non-default artifact precision
    (tables/cpu/efficientformerv2-r224-int8), so tables of two precisions never share a directory."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device_id)
    name = f"{space_name}-r{resolution}" + ("" if precision is None else f"-{precision}")
    return Path(root) / safe / name


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

    @property
    def dtype(self) -> str | None:
        """The artifact precision the build was asked for (settings; None: the device's default).
        What re-measures of the table (validate, check, mes report --measure, adapt) export in,
        so an int8 table is never checked against fp32 models."""
        return (self.meta.get("settings") or {}).get("precision")

    def latency_ms(self) -> dict[str, float]:
        """key -> the latency estimates use (the consensus of the entry's rounds)."""
        return dict(zip(self.blocks["key"], self.blocks["latency_ms"].astype(float)))

    def typical_ms(self) -> dict[str, float]:
        """key -> the entry's typical latency (what tools printing averages over runs report); the
        fast-state latency for tables built before typical latencies were kept."""
        fast = self.latency_ms()
        if "typical_ms" not in self.blocks.columns:
            return fast
        typical = dict(zip(self.blocks["key"], pd.to_numeric(self.blocks["typical_ms"], errors="coerce")))
        return {k: (float(v) if v == v and v > 0 else fast[k]) for k, v in typical.items()}

    @property
    def has_typical(self) -> bool:
        return "typical_ms" in self.blocks.columns and bool(
            pd.to_numeric(self.blocks["typical_ms"], errors="coerce").notna().any())

    def flagged(self) -> dict[str, str]:
        """key -> flags ("no-consensus", "implausible") of entries whose latency is in doubt."""
        return _flags(self.blocks)

    def doubted_models(self) -> set[str]:
        """Keys of the whole models whose latency the build itself doubted: flagged (no consensus
        between rounds, measured only in slow periods, a slow outlier of the calibration fit) or
        left out of that fit."""
        left_out = set((self.meta.get("overhead") or {}).get("left_out") or [])
        return set(_flags(self.models)) | {k for k, n in zip(self.models.get("key", []), self.models.get("name", []))
                                           if n in left_out}

    def predicted(self) -> dict[str, float]:
        """key -> one-sigma uncertainty in % of the entries predicted rather than measured (an
        adapted table); empty for a measured table."""
        if "source" not in self.blocks.columns:
            return {}
        unc = pd.to_numeric(self.blocks.get("uncertainty_pct"), errors="coerce") if "uncertainty_pct" in \
            self.blocks.columns else pd.Series([math.nan] * len(self.blocks))
        return {k: (float(u) if u == u else math.nan)
                for k, s, u in zip(self.blocks["key"], self.blocks["source"], unc) if s == PREDICTED}

    def reference_models(self) -> list[tuple[Any, float]]:
        """The EfficientFormerV2 models this table measured whole (its calibration models), each as
        a Candidate with its latency on the table's time base: what a later session can measure
        again to see how fast the device runs now. Most trustworthy first: those the build did not
        doubt (doubted_models), closest to the calibration fit of all of them first (a model's
        value is one measurement; where the fit of the others agrees with it, it carries little
        noise), then the doubted ones. Rows whose architecture cannot be read back (tables written
        before it was kept) are left out."""
        import ast

        from latbench.blocks.candidates import Candidate
        from latbench.space import Arch

        out = []
        if not len(self.models) or "arch" not in self.models.columns:
            return out
        for row in self.models.to_dict("records"):
            data, ms = row.get("arch"), row.get("latency_ms")
            if row.get("role") != "calibration" or not isinstance(data, (str, dict)) or not (ms == ms and ms and ms > 0):
                continue
            try:  # on disk, pandas wrote the dict's repr: read back as a literal, never evaluated
                arch = Arch.from_dict(ast.literal_eval(data) if isinstance(data, str) else data,
                                      source=f"{self.label()}/models.csv")
            except (ValueError, SyntaxError, UsageError):
                continue
            cand = Candidate(str(row["name"]), arch.resolution, arch=arch)
            if cand.key == row["key"]:
                out.append((cand, float(ms)))
        overhead = self.meta.get("overhead") or {}
        fit_error = dict(zip(overhead.get("calibrated_on") or [], overhead.get("fit_errors_pct") or []))
        doubted = self.doubted_models()
        return sorted(out, key=lambda cm: (cm[0].key in doubted, abs(fit_error.get(cm[0].name, math.inf))))

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
        """Write every file atomically, meta.json last with the digests of the CSVs: a complete
        meta means complete CSVs, and a CSV truncated or edited afterwards is detected on load."""
        path = Path(path or self.path)
        path.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, frame, columns in (("blocks.csv", self.blocks, BLOCK_COLUMNS), ("ops.csv", self.ops, OP_COLUMNS),
                                     ("models.csv", self.models, MODEL_COLUMNS)):
            text = frame.reindex(columns=columns).to_csv(index=False)
            atomic_write_text(path / name, text)
            files[name] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "rows": int(len(frame))}
        meta = dict(self.meta)
        meta["schema_version"] = SCHEMA_VERSION
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta["files"] = files
        atomic_write_json(path / "meta.json", meta)
        self.meta, self.path = meta, path
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table, refusing damage: every problem is one UsageError naming the file and
        the fix (`latbench lut repair` rederives the CSVs and meta.json from the journal)."""
        path = Path(path)
        if path.is_file() and path.name in ("blocks.csv", "meta.json"):
            path = path.parent
        if not path.is_dir() or not ((path / "meta.json").is_file() or (path / "journal.sqlite").is_file()):
            raise UsageError(f"{path} is not a latency table (no meta.json/blocks.csv); build one with `latbench lut build`")
        meta = _read_meta(path)
        frames = {}
        for name, columns in (("blocks.csv", BLOCK_COLUMNS), ("ops.csv", OP_COLUMNS), ("models.csv", MODEL_COLUMNS)):
            frames[name] = _read_csv(path, name, columns, (meta.get("files") or {}).get(name))
        blocks = frames["blocks.csv"]
        for col in ("key", "kind", "latency_ms"):
            if col not in blocks.columns:
                raise damaged(path, "blocks.csv", f"lacks column {col!r}")
        if blocks.empty:
            raise damaged(path, "blocks.csv", "has no entries")
        _check_keys(path, "blocks.csv", blocks, "key")
        _check_latencies(path, "blocks.csv", blocks, "key")
        _check_sources(path, blocks)
        if not frames["models.csv"].empty:
            _check_latencies(path, "models.csv", frames["models.csv"], "name")
        return cls(blocks, frames["ops.csv"], frames["models.csv"], meta, path)

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


def device_diff(recorded: dict[str, Any], current: dict[str, Any],
                keys: Iterable[str] | None = None) -> list[str]:
    """Provenance fields (`keys`, default PROVENANCE_KEYS) that differ between two device
    descriptions ("field: recorded -> current"); only fields both sides know are compared."""
    return [f"{k}: {recorded[k]!r} -> {current[k]!r}" for k in (PROVENANCE_KEYS if keys is None else keys)
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


# -- reading a table defensively ------------------------------------------------------------------
def _flags(frame: pd.DataFrame) -> dict[str, str]:
    """key -> flags of a table frame's rows that carry any."""
    if "flags" not in frame.columns:
        return {}
    return {k: f for k, f in zip(frame["key"], frame["flags"]) if isinstance(f, str) and f}


def damaged(path: Path, file: str, what: str) -> UsageError:
    """The one-line error for a damaged table file, with the fix that applies."""
    if (path / "journal.sqlite").is_file():
        fix = f"rederive it from the journal with `latbench lut repair {path}`"
    else:
        fix = f"it has no journal to rederive it from: rebuild it with `latbench lut build ... --force --out {path}`"
    return UsageError(f"latency table {path}: {file} {what}; {fix}")


def _read_meta(path: Path) -> dict[str, Any]:
    if not (path / "meta.json").is_file():
        raise damaged(path, "meta.json", "is missing")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(path, "meta.json", f"is not valid JSON ({first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise damaged(path, "meta.json", f"holds a {type(meta).__name__}, not a mapping")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise damaged(path, "meta.json", f"has schema {version!r}, this latbench reads {SCHEMA_VERSION}")
    for key, kind in (("device", dict), ("files", dict)):
        if not isinstance(meta.get(key), kind):
            raise damaged(path, "meta.json", f"lacks {key!r} (or it is not a {kind.__name__})")
    # Optional fields that code reads by shape: a wrong type would surface deep inside an estimate.
    for key, kinds, what in (("device_id", (str,), "a string"), ("overhead", (dict,), "a mapping"),
                             ("space", (dict,), "a mapping"), ("settings", (dict,), "a mapping"),
                             ("anchors", (dict,), "a mapping"), ("flagged", (dict,), "a mapping"),
                             ("resolution", (int,), "an integer")):
        value = meta.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise damaged(path, "meta.json", f"has a {key!r} that is not {what} ({type(value).__name__})")
    overhead = meta.get("overhead") or {}
    scales = overhead.get("scales") or {}
    if not isinstance(scales, dict):
        raise damaged(path, "meta.json", f"has overhead 'scales' that are not a mapping ({type(scales).__name__})")
    for name, value in [("scale", overhead.get("scale"))] + [(f"scales.{g}", v) for g, v in scales.items()]:
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and math.isfinite(value) and value >= 0):
            raise damaged(path, "meta.json", f"has an overhead {name} that is not a non-negative number")
    return meta


def _read_csv(path: Path, name: str, columns: list[str], recorded: dict[str, Any] | None) -> pd.DataFrame:
    file = path / name
    if not file.is_file():
        raise damaged(path, name, "is missing")
    data = file.read_bytes()
    if recorded and recorded.get("sha256") != hashlib.sha256(data).hexdigest():
        raise damaged(path, name, "was truncated or edited since it was written (its digest in meta.json differs)")
    try:
        frame = pd.read_csv(file)
    except pd.errors.EmptyDataError:
        raise damaged(path, name, "is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise damaged(path, name, f"is not a readable CSV ({first_line(exc)})") from None
    return frame


def _check_keys(path: Path, name: str, frame: pd.DataFrame, col: str) -> None:
    keys = frame[col]
    if keys.isna().any():
        raise damaged(path, name, f"has a row without a {col} (row {int(keys.isna().to_numpy().nonzero()[0][0]) + 2})")
    dup = keys[keys.duplicated()]
    if len(dup):
        raise damaged(path, name, f"lists {dup.iloc[0]!r} twice")


def _check_sources(path: Path, blocks: pd.DataFrame) -> None:
    """An entry is measured or predicted, and a predicted one carries its uncertainty."""
    if "source" not in blocks.columns:
        return
    for i, (key, source) in enumerate(zip(blocks["key"], blocks["source"])):
        if not (source in (MEASURED, PREDICTED) or (isinstance(source, float) and math.isnan(source))):
            raise damaged(path, "blocks.csv", f"has a source {source!r} that is neither {MEASURED!r} nor "
                                              f"{PREDICTED!r} (row {i + 2}, {key!r})")
    unc = pd.to_numeric(blocks["uncertainty_pct"], errors="coerce") if "uncertainty_pct" in blocks.columns \
        else pd.Series([math.nan] * len(blocks))
    for i, (key, source, u) in enumerate(zip(blocks["key"], blocks["source"], unc)):
        if source == PREDICTED and not (u == u and math.isfinite(u) and u >= 0):
            raise damaged(path, "blocks.csv", f"has a predicted entry without a non-negative uncertainty_pct "
                                              f"(row {i + 2}, {key!r})")


def _check_latencies(path: Path, name: str, frame: pd.DataFrame, label: str) -> None:
    values = pd.to_numeric(frame["latency_ms"], errors="coerce")
    bad = ~(values.notna() & values.map(lambda v: math.isfinite(v) and v > 0 if v == v else False))
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raw = frame["latency_ms"].iloc[i]
        what = "blank" if pd.isna(raw) else f"{raw!r}"
        raise damaged(path, name, f"has a latency_ms that is not a positive number ({what}, row {i + 2}, "
                                  f"{frame[label].iloc[i]!r})")
    frame["latency_ms"] = values.astype(float)
    # An entry is the consensus of its own samples: far outside their spread, it was edited.
    for col, worse in (("p95_ms", lambda v, q: v > 3 * q), ("p5_ms", lambda v, q: v < q / 3)):
        if col not in frame.columns:
            continue
        bound = pd.to_numeric(frame[col], errors="coerce")
        off = [i for i, (v, q) in enumerate(zip(frame["latency_ms"], bound)) if q == q and q > 0 and worse(v, q)]
        if off:
            i = off[0]
            raise damaged(path, name, f"has a latency_ms far outside its own samples ({frame['latency_ms'].iloc[i]:g} "
                                      f"ms against {col} {bound.iloc[i]:g} ms, row {i + 2}, {frame[label].iloc[i]!r})")
