"""Build, extend and validate latency lookup tables on a device.

Flow: block configs -> export (content-addressed cache) -> runner.prepare -> interleaved,
randomised rounds with a drift anchor -> every measurement committed to the table's journal as
it is taken -> blocks.csv/ops.csv/models.csv/meta.json derived from the journal atomically.

Re-running a build measures only the (key, round) pairs the journal lacks, so a killed build
resumes where it stopped and a grown space costs only its new configurations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import latbench
from latbench.blocks import BlockConfig, EmptyConfig, FFNConfig, overhead_blocks
from latbench.candidates import Candidate
from latbench.errors import UsageError
from latbench.estimator import LatencyEstimator, fit_calibration
from latbench.measurement import Measurement, merge_measurements
from latbench.tables import (
    BLOCK_COLUMNS,
    MODEL_COLUMNS,
    OP_COLUMNS,
    Journal,
    LatencyTable,
    block_row,
    device_diff,
    op_rows,
    rounds_stats,
)

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class BuildSettings:
    rounds: int = 3  # interleaved passes over all blocks; samples are pooled across rounds
    warmup: int = 10
    runs: int | None = None  # None: the runner's adaptive policy
    profile: bool = True  # per-op breakdown (taken in round 0 only)
    anchor_every: int = 12
    seed: int = 0
    jobs: int = 2
    calibration_models: int = 4  # whole models measured end to end to fit the overhead model
    precision: str | None = None
    # Per-measurement time caps for runners with an adaptive policy: many short interleaved
    # measurements beat one long one on a drifting device.
    block_time_cap_s: float = 1.5
    model_time_cap_s: float = 4.0
    warmup_time_s: float = 0.05
    min_time_s: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BuildResult:
    table: LatencyTable
    measured: list[str] = field(default_factory=list)  # (key, round) pairs measured by this run, as "key#r"
    reused: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    schedule: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Artifact:
    key: str
    path: Path
    content_hash: str


def export_for_runner(items: Sequence[Any], fmt: str, jobs: int, precision: str | None,
                      progress: bool) -> dict[str, Artifact]:
    """Export through the content-addressed cache; raise if any item failed."""
    from latbench.export import export_items

    if not items:
        return {}
    kwargs: dict[str, Any] = {"formats": (fmt,), "jobs": jobs, "progress": progress}
    if precision:
        kwargs["precision"] = precision
    report = export_items(list(items), **kwargs)
    if report.failures:
        first = report.failures[0]
        raise UsageError(f"export failed for {len(report.failures)} item(s), first {first.key}: {first.error}")
    return {r.key: Artifact(r.key, Path(r.path), r.content_hash) for r in report if r.format == fmt}


def pick_anchor(journal: Journal, resolution: int) -> BlockConfig:
    """The table's anchor: re-measured periodically to detect drift and normalise it away.

    Fixed once per table (kept in the journal, so resumed and incremental builds share it) and
    the same mid-sized block for every table of a resolution, whatever it measures.
    """
    from latbench.blocks import config_from_fields

    saved = journal.get_meta("anchor")
    if saved:
        return config_from_fields(saved["fields"])
    anchor = FFNConfig(resolution, 3, 96, 4)
    journal.set_meta("anchor", {"key": anchor.key, "fields": anchor.fields()})
    return anchor


def calibration_candidates(space, resolution: int, n: int, seed: int) -> list[Candidate]:
    """S0 plus random subnets of the space (seeds disjoint from `lut validate`'s default)."""
    if n <= 0 or space is None:
        return []
    from latbench.space import named_arch

    out: list[Candidate] = []
    s0 = named_arch("efficientformerv2_s0", resolution)
    if space.contains(s0):
        out.append(Candidate(s0.label(), resolution, arch=s0))
    rng = random.Random(f"calibration:{seed}")
    while len(out) < n:
        arch = space.sample(rng, resolution)
        from latbench.space import Arch

        arch = Arch(arch.stages, arch.resolution, f"calib-{len(out)}")
        out.append(Candidate(arch.name, resolution, arch=arch))
    return out


@contextlib.contextmanager
def sampling_policy(runner, **changes: float):
    """Temporarily adjust the adaptive sampling policy of runners that have one (cpu, mac)."""
    policy = getattr(runner, "policy", None)
    if policy is None or not dataclasses.is_dataclass(policy):
        yield
        return
    runner.policy = dataclasses.replace(policy, **{k: v for k, v in changes.items() if hasattr(policy, k)})
    try:
        yield
    finally:
        runner.policy = policy


class TableBuilder:
    """Drives one build into `out_dir` on an open runner."""

    def __init__(self, runner, out_dir: str | Path, settings: BuildSettings, *, force: bool = False,
                 progress: ProgressFn | None = None, show_export_progress: bool = True):
        self.runner = runner
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.force = force
        self.progress = progress or (lambda phase, done, total: None)
        self.show_export_progress = show_export_progress
        self.device = runner.describe()
        self.timings: dict[str, float] = {"export_s": 0.0, "prepare_s": 0.0, "measure_wall_s": 0.0,
                                          "timed_runs_s": 0.0}
        self.schedule_reports: list[dict[str, Any]] = []

    # -- journal / provenance -------------------------------------------------------------------
    def _open_journal(self) -> Journal:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal(self.out_dir / "journal.sqlite")
        previous = journal.get_meta("device")
        if previous is not None and not self.force:
            diffs = device_diff(previous, self.device)
            if diffs:
                journal.close()
                raise UsageError(f"table {self.out_dir} was measured on another device or runtime "
                                 f"({'; '.join(diffs)}); pass --force to re-measure it or --out another directory")
        journal.set_meta("device", self.device)
        journal.set_meta("device_id", getattr(self.runner, "device_id", None))
        return journal

    # -- measuring ----------------------------------------------------------------------------
    def _measure(self, journal: Journal, items: dict[str, Any], roles: dict[str, str], rounds: int,
                 profile_round0: bool) -> list[str]:
        """Measure every (key, round) the journal lacks; commit each as it finishes."""
        if self.force:
            journal.forget(items)
        done = journal.rounds_done()
        todo = {k: [r for r in range(rounds) if r not in done.get(k, set())] for k in items}
        todo = {k: rs for k, rs in todo.items() if rs}
        if not todo:
            return []
        t0 = time.perf_counter()
        anchor_cfg = self.anchor_cfg
        arts = export_for_runner(list(dict.fromkeys([items[k] for k in todo] + [anchor_cfg])), self.runner.artifact_format, self.settings.jobs,
                                 self.settings.precision, self.show_export_progress)
        self.timings["export_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        prepared = {}
        for i, k in enumerate(todo):
            a = arts[k]
            prepared[k] = self.runner.prepare(a.path, a.content_hash, label=k)
            self.progress("prepare", i + 1, len(todo))
        a = arts[anchor_cfg.key]
        anchor = self.runner.prepare(a.path, a.content_hash, label=anchor_cfg.key)
        self.timings["prepare_s"] += time.perf_counter() - t0
        measured: list[str] = []
        total = sum(len(rs) for rs in todo.values())
        t0 = time.perf_counter()
        has_models = any(roles[k] == "model" for k in todo)
        cap = self.settings.model_time_cap_s if has_models else self.settings.block_time_cap_s
        # The session is already warm from prepare(); a short warm-up refills the caches, and a
        # minimum sampling time gives tiny blocks many samples per round.
        with sampling_policy(self.runner, time_cap_s=cap, warmup_time_s=self.settings.warmup_time_s,
                             min_time_s=min(cap, self.settings.min_time_s)):
            self._rounds(journal, items, roles, rounds, profile_round0, todo, prepared, anchor, measured, total)
        self.timings["measure_wall_s"] += time.perf_counter() - t0
        return measured

    def _rounds(self, journal, items, roles, rounds, profile_round0, todo, prepared, anchor, measured, total) -> None:
        from device_runners.schedule import interleaved_measure

        for rnd in range(rounds):
            keys = [k for k, rs in todo.items() if rnd in rs]
            if not keys:
                continue

            def commit(res, rnd=rnd) -> None:
                m: Measurement = res.measurement
                sampling = m.provenance.get("sampling") or {}
                self.timings["timed_runs_s"] += sampling.get("timed_wall_s", sum(m.samples_ms) / 1e3)
                if res.is_anchor:
                    self._anchor_ms = m.median
                    return
                # The anchor's latest speed, for drift normalisation when the table is derived.
                m.provenance["anchor_ms"] = self._anchor_ms
                journal.record(res.key, rnd, roles[res.key], items[res.key].fields(), m, prepared[res.key].content_hash)
                measured.append(f"{res.key}#{rnd}")
                self.progress("measure", len(measured), total)

            run = interleaved_measure(
                self.runner, {k: prepared[k] for k in keys}, anchor=anchor, rounds=1,
                anchor_every=self.settings.anchor_every, warmup=self.settings.warmup, runs=self.settings.runs,
                profile=profile_round0 and rnd == 0, seed=self.settings.seed * 1000 + rnd, on_result=commit,
            )
            report = run.run()
            self.schedule_reports.append({"round": rnd, **report.to_dict()})

    # -- the build ----------------------------------------------------------------------------
    def build(self, configs: Sequence[BlockConfig], *, space=None, resolution: int | None = None,
              calibration: Sequence[Candidate] = ()) -> BuildResult:
        t_start = time.perf_counter()
        configs = list(dict.fromkeys(configs))
        self._anchor_ms: float | None = None
        items: dict[str, Any] = {c.key: c for c in configs}
        for e in overhead_blocks(configs):
            items.setdefault(e.key, e)
        # The model-input empty is needed by every estimate.
        r = resolution or configs[0].resolution
        e_in = EmptyConfig.for_shape(r, (1, 3, r, r))
        items.setdefault(e_in.key, e_in)
        with self._open_journal() as journal:
            # One anchor per table: its speed at the time of each measurement is recorded, so slow
            # phases of a shared host can be normalised away.
            self.anchor_cfg = pick_anchor(journal, r)
            reused = sum(1 for k, rs in journal.rounds_done("block").items() if k in items)
            # Calibration models are measured in the same interleaved rounds as the blocks, so the
            # overhead fit compares the two under the same host conditions.
            cal_items = {c.key: c for c in calibration}
            roles = {**{k: "block" for k in items}, **{k: "model" for k in cal_items}}
            measured = self._measure(journal, {**items, **cal_items}, roles, self.settings.rounds,
                                     self.settings.profile)
            table = self._materialise(journal, space, r, list(calibration))
        self.timings["total_s"] = time.perf_counter() - t_start
        table.meta["build_timings"] = self.timings
        table.save()
        return BuildResult(table, measured, reused, dict(self.timings), table.meta.get("schedule", []))

    def _materialise(self, journal: Journal, space, resolution: int, calibration: list[Candidate]) -> LatencyTable:
        block_rows, ops = [], []
        from latbench.blocks import config_from_fields

        block_ms = journal.measurements("block")
        model_ms = journal.measurements("model")
        anchors = [m.provenance.get("anchor_ms") for _, ms, _ in list(block_ms.values()) + list(model_ms.values())
                   for m in ms]
        anchors = [a for a in anchors if a]
        reference = statistics.median(anchors) if anchors else None
        for key, (fields, ms, ch) in sorted(block_ms.items()):
            config = config_from_fields(fields)
            params = None if config.kind == "model" else config.params()
            block_rows.append(block_row(fields, key, ms, ch, params, config.input_shape, reference))
            profiled = next((m for m in ms if m.per_op), None)
            if profiled is not None:
                ops.extend(op_rows(key, profiled))
        # A --model/--arch build into a space's table keeps the space it was built for.
        if space is not None:
            journal.set_meta("space", {"name": space.name, "digest": space.digest(), "source": space.source,
                                       "definition": space.to_dict()})
        space_info = journal.get_meta("space")
        # Drift reports accumulate over resumed and incremental runs.
        schedule = (journal.get_meta("schedule") or []) + self.schedule_reports
        journal.set_meta("schedule", schedule)
        self.schedule_reports = []
        meta: dict[str, Any] = {
            "anchor": {"key": self.anchor_cfg.key, "fields": self.anchor_cfg.fields(), "reference_ms": reference,
                       "measurements": len(anchors),
                       "spread": (max(anchors) / min(anchors) - 1) if anchors else None},
            "name": self.out_dir.name,
            "device_id": getattr(self.runner, "device_id", None),
            "device": self.device,
            "latbench_version": latbench.__version__,
            "space": space_info,
            "resolution": resolution,
            "settings": self.settings.to_dict(),
            "created": journal.get_meta("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "schedule": schedule,
        }
        if journal.get_meta("created") is None:
            journal.set_meta("created", meta["created"])
        table = LatencyTable(pd.DataFrame(block_rows, columns=BLOCK_COLUMNS), pd.DataFrame(ops, columns=OP_COLUMNS),
                             pd.DataFrame(columns=MODEL_COLUMNS), meta, self.out_dir)
        # Overhead model: empties are in the table; fit scale/intercept on whole models measured end to end.
        table.meta["overhead"] = {"empty_models": True, "scale": 1.0, "intercept_ms": 0.0}
        est = LatencyEstimator(table)
        model_rows, raw, measured = [], [], []
        cands = {c.key: c for c in calibration}
        for key, (fields, ms, ch) in sorted(model_ms.items()):
            m = merge_measurements(ms)
            stats = rounds_stats(ms, reference)
            cand = cands.get(key) or candidate_from_fields(fields, resolution)
            row = {"name": fields.get("name", key), "key": key, "role": "calibration", **stats,
                   "content_hash": ch, "measured_at": m.provenance.get("measured_at"), "arch": fields.get("arch")}
            if cand is not None:
                row["params"] = cand.params()
                row["macs"] = cand.macs()
                blocks = cand.blocks()
                if all(k in est.ms for k in est.required_keys(blocks)):
                    raw.append(est.raw(blocks)[0])
                    measured.append(stats["median_ms"])
            model_rows.append(row)
        table.models = pd.DataFrame(model_rows, columns=MODEL_COLUMNS)
        if raw:
            scale, intercept = fit_calibration(raw, measured)
            table.meta["overhead"] = {
                "empty_models": True, "scale": scale, "intercept_ms": intercept,
                "method": "sum(block - empty(shape)) + empty(input), then scale/intercept fitted by relative "
                          "least squares on whole models measured end to end",
                "calibrated_on": [r["name"] for r in model_rows if r.get("params") is not None],
            }
        return table


def candidate_from_fields(fields: dict[str, Any], resolution: int) -> Candidate | None:
    """The Candidate a journal row of a whole model was measured for (inverse of Candidate.fields)."""
    from latbench.space import Arch

    if fields.get("arch"):
        arch = Arch.from_dict(fields["arch"], source="journal")
        return Candidate(arch.label(), arch.resolution, arch=arch)
    if fields.get("model_name"):
        return Candidate(fields["name"], resolution, model_name=fields["model_name"])
    return None
