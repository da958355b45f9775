"""An adapted table: a new device's complete table from known devices' tables and a few measurements.

Flow: source tables of one space and resolution -> every entry's source latency (the geometric
mean over the sources holding it) and cost -> `select_entries` picks the entries to measure (every
kind; then, weighed by typical models of the space, those whose prediction would leave their
estimates least certain after calibration), plus a few whole models for calibration (one of
them the attention-free twin of another), within the budget
-> they are measured through the normal measuring session into the table's journal (consensus,
anchors, resume) -> `derive_table` writes the complete table: measured entries as measured, the
rest predicted by the transfer model (latbench.tables.transfer) fitted on what is measured, each
with its uncertainty, calibrated on the whole models like any table.

The plan (sources, budget, selection, every entry's source latency and cost) is kept in the
journal's `adapt` record, so a killed adapt resumes without re-measuring, `lut repair` rederives
the table without the sources, and `lut build` on the table measures predicted entries, after
which the model is refitted on everything measured.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.blocks.candidates import Candidate, sample_candidates
from latbench.blocks.configs import BlockConfig, config_from_fields
from latbench.core.errors import UsageError
from latbench.measuring.journal import Journal
from latbench.space import SearchSpace
from latbench.tables.build import BuildResult, BuildSettings, TableBuilder
from latbench.tables.overhead import empty_key, entry_counts
from latbench.tables.table import LatencyTable, row_config
from latbench.tables.transfer import Entry, select_entries

#: Target measurements (blocks and whole models) an adapt takes by default.
DEFAULT_BUDGET = 20
#: Whole models measured for calibration by default: three (S0, a sampled subnet and the
#: attention-free twin of one of them: a scale for attention and one for the rest) once the
#: budget leaves MIN_BLOCKS blocks beside them, fewer below. Whole models come before blocks:
#: replayed from the four bench pairs' full journals (30 subnets + S0-L end to end), budget 5 as
#: 5 blocks put 9-68 % of subnets within 5 % (the table uncalibrated), as 2 blocks + 3 models
#: 65-91 %; budget 10 as 10 blocks 9-79 %, 9 blocks + S0 15-97 % (one scale: `--xnnpack off`,
#: whose attention costs 1.4x its isolated time in a model, fell to 15 %), 7 + 3 79-91 %; budget
#: 20 as 17 + 3 82-100 %, 16 + 4 or 14 + 6 no better (68-97 %, 74-97 %).
MAX_DEFAULT_CALIBRATION = 3
MIN_BLOCKS = 2


def sources_dtype(sources: Sequence[LatencyTable]) -> str | None:
    """The artifact precision an adapt from `sources` measures in by default: int8 when they are
    int8 tables (an int8 table predicts int8 entries), None (the device's default) when none is.
    Tables of int8 and of another precision together are refused: the transfer model would mix
    two kinds of latency in one source latency."""
    int8 = [t.dtype == "int8" for t in sources]
    if any(int8) and not all(int8):
        raise UsageError("the source tables mix int8 and other precisions; adapt from tables of one precision")
    return "int8" if int8 and all(int8) else None


@dataclass
class AdaptPlan:
    """What one adapt measures and from what it predicts the rest."""

    out: Path
    resolution: int
    space: SearchSpace | None
    sources: list[dict[str, Any]]  # path, sha256 of blocks.csv, device id, entries
    entries: dict[str, Entry]
    fields: dict[str, dict[str, Any]]  # key -> the block's configuration fields
    budget: int
    selected: list[str]  # block keys measured on the target
    calibration: list[Candidate] = field(default_factory=list)  # whole models measured on the target

    def record(self) -> dict[str, Any]:
        """The journal's `adapt` record (what derive_table and a resumed adapt read)."""
        return {"sources": self.sources, "budget": self.budget, "selected": self.selected,
                "calibration": [c.key for c in self.calibration],
                "source_latency": "geometric mean of the sources' latency_ms over the sources holding the entry",
                "entries": {k: {**e.to_dict(), "fields": self.fields[k]} for k, e in self.entries.items()}}


def check_sources(sources: Sequence[LatencyTable]) -> None:
    """One-line UsageError unless the sources are tables of one space at one resolution."""
    if not sources:
        raise UsageError("lut adapt needs at least one fully measured source table (SOURCE...)")
    first = sources[0]
    for t in sources[1:]:
        if t.meta.get("resolution") != first.meta.get("resolution"):
            raise UsageError(f"source {t.label()} is at resolution {t.meta.get('resolution')} but {first.label()} "
                             f"at {first.meta.get('resolution')}: adapt from tables of one resolution")
        a, b = (first.meta.get("space") or {}).get("digest"), (t.meta.get("space") or {}).get("digest")
        if a != b:
            raise UsageError(f"source {t.label()} was built for another search space than {first.label()} "
                             f"({(t.meta.get('space') or {}).get('name')} {str(b)[:12]} vs "
                             f"{(first.meta.get('space') or {}).get('name')} {str(a)[:12]}): adapt from tables "
                             "of one space")


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def source_entries(sources: Sequence[LatencyTable]) -> tuple[dict[str, Entry], dict[str, dict[str, Any]]]:
    """Every entry of the sources with its source latency (geometric mean over the sources that
    hold it) and its cost features; and the configuration fields of each."""
    logs: dict[str, list[float]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for t in sources:
        for r in t.blocks.to_dict("records"):
            ms = _number(r.get("latency_ms"))
            if ms is None or ms <= 0:
                continue
            logs.setdefault(r["key"], []).append(math.log(ms))
            rows.setdefault(r["key"], r)
    entries, fields = {}, {}
    for key, r in sorted(rows.items()):
        config = row_config(r)
        kind = config.kind
        if kind == "model":  # a whole reference model: its own entry; its cost is its source latency
            macs, params = 0.0, 0.0
        else:
            macs = _number(r.get("macs"))
            params = _number(r.get("params"))
            macs = float(config.macs()) if macs is None else macs
            params = float(config.params()) if params is None else params
        # Strided attention (stage 3) runs another operator graph than plain attention: its own
        # transfer kind (cpu -> litert ratios 0.74 against 0.99, stage 4).
        transfer_kind = f"{kind}-strided" if getattr(config, "strided", False) else kind
        entries[key] = Entry(key, kind, getattr(config, "stage", None), math.exp(sum(logs[key]) / len(logs[key])),
                             macs, params, float(math.prod(config.input_shape)), transfer_kind)
        fields[key] = config.fields()
    return entries, fields


def _digest(table: LatencyTable) -> str:
    if table.path is None or not (Path(table.path) / "blocks.csv").is_file():
        raise UsageError(f"source {table.label()} is not saved as a table directory; save it (LatencyTable.save) "
                         "so the adapted table can name it and its digest")
    return hashlib.sha256((Path(table.path) / "blocks.csv").read_bytes()).hexdigest()


def plan_adapt(sources: Sequence[LatencyTable], out: str | Path, *, budget: int | None = None,
               calibrate: int | None = None, seed: int = 0) -> AdaptPlan:
    """Check the sources and the out directory, and choose what to measure. A table adapted
    into `out` before (the same sources) keeps its selection; a larger budget adds to it."""
    check_sources(sources)
    out = Path(out)
    budget = DEFAULT_BUDGET if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise UsageError(f"--budget is a number of measurements, at least 1; got {budget!r}")
    entries, fields = source_entries(sources)
    # Kinds the blocks leave unmeasured borrow the pooled ratio (with a larger uncertainty); the
    # whole models' scales then correct what that leaves in whole models (MIN_BLOCKS).
    if calibrate is None:
        calibrate = max(0, min(MAX_DEFAULT_CALIBRATION, budget - MIN_BLOCKS))
    if calibrate < 0 or calibrate > budget - 1:
        raise UsageError(f"--calibrate must be between 0 and {budget - 1} (the budget less one block), "
                         f"got {calibrate}")
    described = [{"path": str(t.path), "sha256": _digest(t), "device_id": t.meta.get("device_id"),
                  "entries": int(len(t.blocks))} for t in sources]
    previous = _previous_record(out)
    if previous is not None and [s["sha256"] for s in previous.get("sources") or []] != [s["sha256"] for s in
                                                                                         described]:
        raise UsageError(f"{out} holds a table adapted from other sources "
                         f"({', '.join(s['path'] for s in previous.get('sources') or [])}); adapt into a new --out")
    resolution = int(sources[0].meta.get("resolution") or 224)
    space = sources[0].space() if (sources[0].meta.get("space") or {}).get("definition") else None
    kept = [k for k in (previous or {}).get("selected") or [] if k in entries]
    blocks = max(budget - calibrate, len(kept))
    order = kind_priority(entries, space, resolution, seed)
    # Models measured by an earlier run with a larger --calibrate stay in the plan (rounds in the journal).
    calibrate = max(calibrate, len((previous or {}).get("calibration") or []))
    calibration = calibration_models(space, resolution, calibrate, seed, entries) \
        if space is not None and calibrate else []
    empty_models = any(e.kind == "empty" for e in entries.values())
    typical = [entry_counts(c.blocks(), empty_models)
               for c in sample_candidates(space, resolution, SELECTION_MODELS, seed, purpose="calibration")] \
        if space is not None else []
    selected = kept + select_entries(list(entries.values()), blocks - len(kept), already=kept, kind_order=order,
                                     models=typical,
                                     calibration=[entry_counts(c.blocks(), empty_models) for c in calibration])
    return AdaptPlan(out, resolution, space, described, entries, fields, budget, selected, calibration)


#: From this many calibration models on, the last is the attention-free twin of the sampled model
#: with the largest attention share (calibration_models).
TWIN_FROM = 3


def calibration_models(space: SearchSpace, resolution: int, count: int, seed: int,
                       entries: dict[str, Entry]) -> list[Candidate]:
    """The whole models an adapt measures: the calibration stream's first `count` (S0 first), the
    last of them, from TWIN_FROM models on, replaced by the twin without attention of the one whose
    attention mixers take the largest share of its source latency. Inside a model attention costs
    another multiple of its isolated time than the rest (`litert --xnnpack off`, fitted on its
    full table's 35 end-to-end models: 1.21-1.40x against 1.02x), and three sampled models cannot
    tell the two scales apart (their attention shares too alike: two scales from three random
    models put fewer subnets within 5 % than one on five of six pairs); a pair that differs by
    exactly its attention can (overhead.fit_scales)."""
    sampled = sample_candidates(space, resolution, count - 1 if count >= TWIN_FROM else count, seed,
                                purpose="calibration")
    if count < TWIN_FROM:
        return sampled

    def attention_share(cand: Candidate) -> float:
        parts = [(b.kind, entries[b.key].source_ms) for b in cand.blocks() if b.key in entries]
        total = sum(ms for _, ms in parts)
        return sum(ms for kind, ms in parts if kind == "mhsa") / total if total > 0 else 0.0

    best = max(sampled, key=attention_share)
    if attention_share(best) <= 0:  # nothing to tell apart: another sampled model
        return sample_candidates(space, resolution, count, seed, purpose="calibration")
    twin = best.arch.without_attention()
    return [*sampled, Candidate(twin.label(), resolution, arch=twin)]


#: Whole models (S0 and the calibration stream's random subnets: never the validation ones) whose
#: blocks rank the kinds by how much of a typical model's latency they carry.
PRIORITY_MODELS = 16
#: ... and whose expected error the selection lowers (transfer.select_entries). Over five draws of
#: 32 / 64 / 100 models the replayed `litert` selection put 90 / 91 / 93 % of subnets within 5 %
#: on the mean (single draws of 100: 91-94 %): more models, less of one draw's chance in the choice.
SELECTION_MODELS = 100


def kind_priority(entries: dict[str, Entry], space: SearchSpace | None, resolution: int, seed: int = 0
                  ) -> list[str]:
    """The kinds in the order a small budget measures them: by their share of the source latency
    of typical models of the space (an empty model counts by what it subtracts, once per block),
    largest first; without a space, by their total source latency. Kinds no model uses (the
    whole reference model) come last."""
    share = {e.transfer_kind: 0.0 for e in entries.values()}
    if space is None:
        for e in entries.values():
            share[e.transfer_kind] += e.source_ms
    else:
        for cand in sample_candidates(space, resolution, PRIORITY_MODELS, seed, purpose="calibration"):
            blocks = cand.blocks()
            keys = [b.key for b in blocks] + [empty_key(b.resolution, b.input_shape) for b in blocks]
            keys.append(empty_key(resolution, (1, 3, resolution, resolution)))
            for key in keys:
                if key in entries:
                    share[entries[key].transfer_kind] += entries[key].source_ms
    return sorted(share, key=lambda kind: (-share[kind], kind))


def _previous_record(out: Path) -> dict[str, Any] | None:
    """The `adapt` record of a table already in `out`; UsageError when `out` holds another table."""
    journal_path = out / "journal.sqlite"
    if not journal_path.is_file():
        if (out / "meta.json").is_file() or (out / "blocks.csv").is_file():
            raise UsageError(f"{out} holds another table (without its journal); adapt into a new --out")
        return None
    with Journal(journal_path) as journal:
        record = journal.get_meta("adapt")
        if record is None and (journal.rows() or (out / "meta.json").is_file()):
            raise UsageError(f"{out} holds another table (measured by `lut build`, not adapted); adapt into a "
                             "new --out")
    return record


class TableAdapter(TableBuilder):
    """Drives one adapt into `out_dir` on an open runner (or dispatcher)."""

    def adapt(self, plan: AdaptPlan) -> BuildResult:
        items: dict[str, BlockConfig] = {k: config_from_fields(dict(plan.fields[k])) for k in plan.selected}

        def record(journal: Journal) -> None:
            previous = journal.get_meta("adapt")
            if previous is None and journal.rows() and not self.force:
                raise UsageError(f"{self.out_dir} holds another table (measured by `lut build`, not adapted); "
                                 "adapt into a new --out")
            journal.set_meta("adapt", plan.record())

        return self.measure(items, plan.calibration, space=plan.space, resolution=plan.resolution, prepare=record)


def upgrade_calibration(table: LatencyTable, configs: Sequence[BlockConfig], space: SearchSpace | None
                        ) -> list[Candidate]:
    """The whole models an upgrade measuring `configs` adds: where it leaves no entry of the table
    predicted, those a full build of `space` calibrates on (BuildSettings: the calibration
    stream's first 8; those the adapt measured, S0 among them, are in its journal already and not
    measured again), so the table is calibrated as a full build is; none otherwise, or without a
    space. The adapt's three models fit one attention scale; a full build's eight may give strided
    attention its own (overhead.fit_scales). The bench's full tables against their truths (30
    subnets + S0-L), scaled as their budget-20 adapt's three models / their own eight fitted: tau
    0.939 / 0.957 (`--xnnpack off`), 0.982 / 0.986 (`litert`); the other pairs alike once the two
    sessions' levels are aligned."""
    if space is None or set(table.predicted()) - {c.key for c in configs}:
        return []
    resolution = int(table.meta.get("resolution") or 224)
    return sample_candidates(space, resolution, BuildSettings.calibration_models, BuildSettings.seed,
                             purpose="calibration")


def upgrade_configs(table: LatencyTable, count: int | None = None) -> list[BlockConfig]:
    """The predicted entries of an adapted table that `lut build --upgrade` measures: all of them,
    or the `count` least certain (largest uncertainty first)."""
    predicted = table.predicted()
    if not predicted:
        raise UsageError(f"table {table.label()} has no predicted entries to measure (it is not an adapted "
                         "table, or every entry is measured already)")
    if count is not None and count < 1:
        raise UsageError(f"--upgrade must be >= 1, got {count}")
    order = sorted(predicted, key=lambda k: (-(predicted[k] if predicted[k] == predicted[k] else math.inf), k))
    keys = order if count is None else order[:count]
    rows = table.blocks.set_index("key")
    return [row_config({"key": k, **rows.loc[k].to_dict()}) for k in keys]
