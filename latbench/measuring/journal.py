"""The journal: an append-only SQLite record of every measurement, committed as it is taken.

A table's `journal.sqlite` is the source of truth; its CSVs and meta.json are derived from it.
Validation, reports and profiles use an in-memory journal through the same code.

Tables:
- `measurements` one row per (key, round): role, configuration fields, the Measurement as JSON
  (raw samples included), artifact hash, when, which device and which session took it;
- `anchors`      every anchor measurement, per (session, device, sequence number): the time base
  of each session, so rounds measured in different sessions can be put on one time base;
- `sessions`     one row per measuring session (purpose, device, provenance, start time);
- `meta`         named JSON values (the anchor keys, the space, calibration settings, ...);
- tables a dispatcher adds through `execute` (e.g. the job ids of a remote service).

SQLite's journaling makes each commit atomic, so a SIGKILL at any point leaves either the whole
row or none of it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latbench.core.errors import LatbenchError, UsageError
from latbench.measuring.measurement import Measurement


@dataclass(frozen=True)
class JournalRow:
    """One measured round of one key."""

    key: str
    round: int
    role: str
    fields: dict[str, Any]
    measurement: Measurement
    content_hash: str | None
    measured_at: float
    device: str | None
    session: str | None


@dataclass(frozen=True)
class AnchorRow:
    """One anchor measurement of one session on one device."""

    session: str
    device: str | None
    seq: int
    key: str
    measurement: Measurement
    measured_at: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    key TEXT NOT NULL, round INTEGER NOT NULL, role TEXT NOT NULL,
    fields TEXT NOT NULL, measurement TEXT NOT NULL, content_hash TEXT,
    measured_at REAL NOT NULL, device TEXT, session TEXT, PRIMARY KEY (key, round));
CREATE TABLE IF NOT EXISTS anchors (
    session TEXT NOT NULL, device TEXT, seq INTEGER NOT NULL, key TEXT NOT NULL,
    measurement TEXT NOT NULL, measured_at REAL NOT NULL, PRIMARY KEY (session, device, seq));
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY, purpose TEXT NOT NULL, device TEXT, started REAL NOT NULL, provenance TEXT);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def journal_error(path: Path | None, exc: sqlite3.DatabaseError) -> LatbenchError:
    """The one-line error for a journal that cannot be opened or written."""
    reason = str(exc).split("\n")[0]
    if "readonly" in reason or "unable to open" in reason:
        return LatbenchError(f"cannot write the journal {path} ({reason}); make its directory writable "
                             f"or copy the table somewhere writable")
    return UsageError(f"the journal {path} is damaged ({reason}); restore it from a copy, or move it aside and "
                      f"rebuild the table with `latbench lut build ... --force`")


class Journal:
    """Append-only measurement record. `Journal(":memory:")` keeps it in memory."""

    def __init__(self, path: str | Path):
        self.in_memory = str(path) == ":memory:"
        self.path = None if self.in_memory else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(":memory:" if self.in_memory else self.path, timeout=30)
        try:
            if not self.in_memory:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                # A cut or overwritten file can open and fail only at the first read of a lost page.
                problem = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if problem != "ok":
                    raise sqlite3.DatabaseError(problem)
            self.db.executescript(_SCHEMA)
            # Journals written before devices and sessions were recorded: add the columns.
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(measurements)")}
            for col in ("device", "session"):
                if col not in cols:
                    self.db.execute(f"ALTER TABLE measurements ADD COLUMN {col} TEXT")
            self.db.commit()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise journal_error(self.path, exc) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions ------------------------------------------------------------------------------
    def start_session(self, purpose: str, device: str | None, provenance: dict[str, Any] | None = None,
                      *, at: float | None = None) -> str:
        """A new session; `at` is the device's clock (default: now), as for every record."""
        session = uuid.uuid4().hex[:12]
        self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                        (session, purpose, device, time.time() if at is None else at,
                         json.dumps(provenance or {}, default=str)))
        self.db.commit()
        return session

    def sessions(self) -> list[dict[str, Any]]:
        return [{"session": s, "purpose": p, "device": d, "started": t}
                for s, p, d, t in self.db.execute("SELECT session, purpose, device, started FROM sessions "
                                                  "ORDER BY started")]

    # -- measurements --------------------------------------------------------------------------
    def record(self, key: str, round_: int, role: str, fields: dict, m: Measurement, content_hash: str | None,
               *, device: str | None = None, session: str | None = None, at: float | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, round_, role, json.dumps(fields, default=str), json.dumps(m.to_dict()), content_hash,
             time.time() if at is None else at, device, session),
        )
        self.db.commit()

    def record_anchor(self, session: str, device: str | None, seq: int, key: str, m: Measurement,
                      *, at: float | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO anchors VALUES (?, ?, ?, ?, ?, ?)",
                        (session, device, seq, key, json.dumps(m.to_dict()), time.time() if at is None else at))
        self.db.commit()

    def rounds_done(self, role: str | None = None) -> dict[str, set[int]]:
        q = "SELECT key, round FROM measurements" + (" WHERE role = ?" if role else "")
        out: dict[str, set[int]] = {}
        for key, rnd in self.db.execute(q, (role,) if role else ()):
            out.setdefault(key, set()).add(rnd)
        return out

    def device_counts(self) -> dict[str, dict[str | None, int]]:
        """key -> device -> how many of its rounds that device measured."""
        out: dict[str, dict[str | None, int]] = {}
        for key, dev, n in self.db.execute("SELECT key, device, COUNT(*) FROM measurements GROUP BY key, device"):
            out.setdefault(key, {})[dev] = n
        return out

    def rows(self, role: str | None = None, keys: Iterable[str] | None = None) -> dict[str, list[JournalRow]]:
        """key -> its rounds in round order."""
        q = ("SELECT key, round, role, fields, measurement, content_hash, measured_at, device, session "
             "FROM measurements" + (" WHERE role = ?" if role else "") + " ORDER BY key, round")
        wanted = None if keys is None else set(keys)
        out: dict[str, list[JournalRow]] = {}
        for key, rnd, rl, fields, mj, ch, at, dev, ses in self.db.execute(q, (role,) if role else ()):
            if wanted is not None and key not in wanted:
                continue
            out.setdefault(key, []).append(JournalRow(key, rnd, rl, json.loads(fields),
                                                      Measurement.from_dict(json.loads(mj)), ch, at, dev, ses))
        return out

    def measurements(self, role: str | None = None) -> dict[str, tuple[dict, list[Measurement], str | None]]:
        """key -> (fields, measurements of every round, content hash)."""
        return {k: (rs[0].fields, [r.measurement for r in rs], rs[0].content_hash)
                for k, rs in self.rows(role).items()}

    def anchors(self, session: str | None = None) -> list[AnchorRow]:
        q = "SELECT session, device, seq, key, measurement, measured_at FROM anchors"
        q += (" WHERE session = ?" if session else "") + " ORDER BY measured_at, seq"
        return [AnchorRow(s, d, q_, k, Measurement.from_dict(json.loads(mj)), at)
                for s, d, q_, k, mj, at in self.db.execute(q, (session,) if session else ())]

    def forget(self, keys: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM measurements WHERE key = ?", [(k,) for k in keys])
        self.db.commit()

    # -- named values --------------------------------------------------------------------------
    def get_meta(self, name: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, name: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value, default=str)))
        self.db.commit()

    # -- dispatchers' own records --------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one SQL statement and commit it: a dispatcher keeps its own records here in its own
        table (`CREATE TABLE IF NOT EXISTS ...`), e.g. the job ids of a remote service, so a
        killed run re-attaches to them. Returns the rows a query gives."""
        rows = self.db.execute(sql, tuple(params)).fetchall()
        self.db.commit()
        return rows
