"""Table maintenance: re-measure entries and find those that moved beyond the noise.

`check_table` measures a sample of a table's entries in a fresh measuring session, interleaved
with the table's anchors, puts the new values on the table's time base (the anchors say how
fast the device is now compared with when the table was built) and compares each with the
stored latency. An entry *moved* when the two differ by a factor beyond 1 + the noise: the
consensus tolerance, plus the larger round spread of the two, plus half the disagreement of the
anchors about the time base. The factor is judged both ways (`moved_by`), as the spreads are
(max/min - 1): a stored value 2.5x too slow reads 0.4 now, and `|0.4 - 1|` would count it as
less of a move (0.6) than a value 2.5x too fast (1.5), small enough for a loaded host's noise.
An entry that reads as moved gets `CONFIRM_ROUNDS` more rounds, later and interleaved, before it
is reported: one check session can sit in a slow period of the device as a whole (on the
development VM a full check of a quiet table read 8 of 102 entries 4-25 % off, and most came back
when checked again). With `fix`, the new rounds of moved and flagged entries are recorded in
the table's journal (as a session of their own) and the table is derived again: the consensus
then runs over old and new rounds together.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.core.errors import UsageError
from latbench.core.progress import ProgressFn
from latbench.measuring.consensus import ConsensusRule
from latbench.measuring.journal import Journal
from latbench.measuring.session import MeasuringSession, Target
from latbench.measuring.timebase import anchor_levels, session_factor
from latbench.tables.table import LatencyTable, device_diff, row_config

#: Further rounds (in later waves) an entry that reads as moved gets before it is reported.
CONFIRM_ROUNDS = 2


def moved_by(ratio: float) -> float:
    """How far `ratio` (now / stored) is from 1 as a factor, in either direction: 0.4 and 2.5 are both 1.5."""
    return max(ratio, 1 / ratio) - 1 if ratio > 0 else math.inf


def _finite(x: Any) -> float:
    x = float(x) if x is not None else math.nan
    return x if math.isfinite(x) else 0.0


@dataclass
class CheckResult:
    table: str
    device: dict[str, Any]
    rows: list[dict[str, Any]]
    time_base_factor: float | None
    anchor_disagreement: float
    fixed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def moved(self) -> list[str]:
        return [r["key"] for r in self.rows if r["moved"]]

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "device": self.device, "checked": len(self.rows), "moved": self.moved,
                "fixed": self.fixed, "time_base_factor": self.time_base_factor,
                "anchor_disagreement": self.anchor_disagreement, "entries": self.rows, "warnings": self.warnings}


def pick_entries(table: LatencyTable, sample: int | None, seed: int, keys: Sequence[str] = ()) -> list[str]:
    """The entries to check: `keys` if given, else all (sample None), or `sample` drawn at
    random, flagged ones first."""
    if keys:
        unknown = [k for k in keys if not table.has(k)]
        if unknown:
            raise UsageError(f"table {table.label()} has no entry {unknown[0]!r} (see `latbench lut show`)")
        return list(dict.fromkeys(keys))
    keys = [k for k in table.blocks["key"]]
    if sample is None or sample >= len(keys):
        return keys
    if sample < 1:
        raise UsageError(f"--samples must be >= 1, got {sample}")
    flagged = [k for k in keys if k in table.flagged()]
    rest = [k for k in keys if k not in flagged]
    random.Random(f"check:{seed}").shuffle(rest)
    return (flagged + rest)[:sample]


def require_journal(table: LatencyTable) -> Path:
    """The table's journal, opened once to prove it whole: a one-line error before any device is opened."""
    if table.path is None or not (Path(table.path) / "journal.sqlite").is_file():
        raise UsageError(f"table {table.label()} has no journal.sqlite; `lut check` needs the table's journal")
    path = Path(table.path) / "journal.sqlite"
    Journal(path).close()
    return path


def check_table(table: LatencyTable, runner: Any, *, sample: int | None = None, keys: Sequence[str] = (),
                seed: int = 0, rounds: int = 3, fix: bool = False, jobs: int = 2,
                progress: ProgressFn | None = None) -> CheckResult:
    from latbench.tables.build import BuildSettings, derive_table, recipe_diff, session_recipe, table_anchors

    require_journal(table)
    current = runner.describe()
    # A fix writes this session's rounds into the table: of another backend, thread count, runtime
    # version or int8 recipe they would make it a table of neither.
    other = device_diff(table.device, current)
    recipe = recipe_diff(table.meta.get("quantization"), session_recipe(runner)) if table.dtype == "int8" else []
    if fix and (other or recipe):
        what = "on another device or runtime" if other else "with another quantization recipe"
        raise UsageError(f"table {table.label()} was measured {what} ({'; '.join(other or recipe)}); --fix would "
                         "mix its rounds with these: check without --fix, or re-measure it with `lut build --force`")
    warnings = [f"table provenance differs: {d}" for d in table.check_provenance(current)]
    warnings += [f"table quantization recipe differs: {d}" for d in recipe]
    keys = pick_entries(table, sample, seed, keys)
    rows_by_key = {r["key"]: r for r in table.blocks.to_dict("records")}
    # Sampled as the table was built, with the table's consensus rule (for the rounds asked).
    built = BuildSettings.from_dict(table.meta.get("settings") or {})
    table_rule = built.consensus
    rule = ConsensusRule.for_rounds(rounds, table_rule.max_rounds, statistic=table_rule.statistic,
                                    tolerance=table_rule.tolerance)
    settings = BuildSettings.from_dict(table.meta.get("settings") or {}, rounds=rounds, consensus=rule, seed=seed,
                                       profile=False, jobs=jobs)
    levels = dict((table.meta.get("anchors") or {}).get("levels_ms") or {})
    with Journal(Path(table.path) / "journal.sqlite") as table_journal:
        anchors = table_anchors(table_journal, int(table.meta.get("resolution") or 224))
    # The check's own session, in memory: nothing reaches the table unless --fix says so.
    scratch = Journal(":memory:")
    applied: list[float | None] = [None]

    def time_base(journal: Journal, session: str) -> dict[str, float]:
        if not levels or not session:
            return {}
        applied[0] = session_factor(anchor_levels(journal.anchors(session), rule), levels)
        return {session: applied[0]} if applied[0] else {}

    def reading(key: str, v: Any, disagreement: float) -> tuple[float, float, float]:
        """(stored ms, now / stored, the noise that ratio is judged against) for one entry."""
        stored = float(rows_by_key[key]["latency_ms"])
        ratio = v.value / stored if stored > 0 and math.isfinite(v.value) else math.nan
        noise = (rule.tolerance + max(_finite(v.spread), _finite(rows_by_key[key].get("round_spread")))
                 + disagreement / 2)
        return stored, ratio, noise

    def unconfirmed(verdicts: dict[str, Any]) -> list[str]:
        # Entries reading as moved (before the anchors' disagreement is known) that have not had
        # their confirming rounds yet.
        out = []
        for key, v in verdicts.items():
            _, ratio, noise = reading(key, v, 0.0)
            if v.rounds < rounds + CONFIRM_ROUNDS and math.isfinite(ratio) and moved_by(ratio) > noise:
                out.append(key)
        return out

    targets = [Target(k, row_config(rows_by_key[k]), "block") for k in keys]
    session = MeasuringSession(runner, settings.plan(), journal=scratch, purpose="check", progress=progress,
                               export_jobs=settings.jobs, precision=settings.precision, time_base=time_base,
                               recheck=unconfirmed)
    res = session.run(targets, [Target(a.key, a, "anchor") for a in anchors])
    now_levels = anchor_levels(res.anchors, rule)
    factors = [levels[k] / now_levels[k] for k in now_levels if k in levels and now_levels[k] > 0]
    disagreement = (max(factors) / min(factors) - 1) if len(factors) > 1 else 0.0
    if not levels:
        warnings.append("the table records no anchor levels: the check compares raw values")
    out_rows = []
    for key in keys:
        v = res.verdicts[key]
        stored, ratio, noise = reading(key, v, disagreement)
        moved = not math.isfinite(ratio) or moved_by(ratio) > noise
        flags = rows_by_key[key].get("flags")
        out_rows.append({"key": key, "stored_ms": stored, "now_ms": v.value, "ratio": ratio, "noise": noise,
                         "moved": moved, "agreement": v.agreement,
                         "flags": flags if isinstance(flags, str) and flags else None})
    result = CheckResult(table.label(), res.device, out_rows, applied[0], disagreement, warnings=warnings)
    if fix:
        to_fix = [r["key"] for r in out_rows if r["moved"] or r["flags"]]
        if to_fix:
            with Journal(Path(table.path) / "journal.sqlite") as table_journal:
                import_session(scratch, res.session, to_fix, table_journal)
                new = derive_table(table_journal, Path(table.path))
            new.save()
            after = new.latency_ms()
            for r in out_rows:
                r["fixed_ms"] = after.get(r["key"]) if r["key"] in to_fix else None
            result.fixed = to_fix
    scratch.close()
    return result


def import_session(src: Journal, session: str, keys: Sequence[str], dst: Journal) -> None:
    """Copy one session's rounds of `keys` (renumbered after the rounds `dst` has) and all its
    anchor readings into `dst`, under a new session of `dst`."""
    info = next(s for s in src.sessions() if s["session"] == session)
    new = dst.start_session(info["purpose"], info["device"])
    done = dst.rounds_done()
    for key, rows in src.rows(keys=keys).items():
        nxt = max(done.get(key, {-1})) + 1
        for i, r in enumerate(rows):
            dst.record(key, nxt + i, r.role, r.fields, r.measurement, r.content_hash, device=r.device, session=new)
    for a in src.anchors(session):
        dst.record_anchor(new, a.device, a.seq, a.key, a.measurement)
