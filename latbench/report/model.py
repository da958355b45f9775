"""MES reports (ranked candidates, Pareto flags, plots) and per-block latency reports.

`build_report` turns candidates + a latency table (+ accuracies, + optional measurements) into an
`MESReport`; `write_report` writes report.md, a self-contained report.html (plots inlined as data
URIs), report.csv, report.json and the plots as PNG and SVG. `latency_report` is the per-block view
of one model that the builder prints (`latbench model build`).

Conventions:
- Candidates are ranked by MES, highest first (by the measured MES when every candidate was measured).
- A candidate is Pareto-optimal when no other candidate is at least as fast and at least as accurate
  and strictly better in one of the two (measured latency when measured, else the estimate).
  Candidates without an accuracy get no flag.
- MES does not depend on accuracy, so its iso-lines cannot be drawn in the accuracy-latency plane;
  the figure pairs accuracy vs latency (with the Pareto front) with latency vs size, the plane MES
  lives in, where the iso-lines are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from latbench.blocks.candidates import Candidate
from latbench.core.errors import UsageError
from latbench.core.text import weights_mb
from latbench.efficiency.pareto import pareto_flags
from latbench.efficiency.score import MES
from latbench.estimation.estimator import Estimate, LatencyEstimator
from latbench.search.oracles import AccuracyEntry
from latbench.space import Arch
from latbench.tables.table import LatencyTable

GROUP_ORDER = ["stem", "stage1", "stage2", "stage3", "stage4", "head", "model"]
PLOTS = ("accuracy_latency", "latency_breakdown")


# -- the report --------------------------------------------------------------------------------------
@dataclass
class CandidateRow:
    name: str
    resolution: int
    params: int
    macs: int
    latency_ms: float
    mes: float
    plain_sum_ms: float
    per_group_ms: dict[str, float]
    measured_ms: float | None = None
    mes_measured: float | None = None
    accuracy: float | None = None
    accuracy_source: str | None = None
    pareto: bool | None = None
    rank: int = 0
    arch: str | None = None
    digest: str | None = None
    metric_values: dict[str, float] = field(default_factory=dict)
    typical_ms: float | None = None  # the typical latency beside the fast state (latency_ms)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MESReport:
    title: str
    rows: list[CandidateRow]
    mes: MES
    table: str
    device: str | None
    estimate_method: str
    mes_measured: MES | None = None
    measured_device: str | None = None
    notes: list[str] = field(default_factory=list)
    extra_sections: list[tuple[str, pd.DataFrame]] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return any(r.measured_ms is not None for r in self.rows)

    def constants_line(self) -> str:
        line = self.mes.describe()
        if self.mes_measured is not None and self.mes_measured != self.mes:
            line += f" | measured MES: {self.mes_measured.describe()}"
        return line

    def to_frame(self) -> pd.DataFrame:
        recs = []
        for r in self.rows:
            rec = {"rank": r.rank, "name": r.name, "params": r.params, "macs": r.macs, "latency_ms": r.latency_ms,
                   "typical_ms": r.typical_ms, "measured_ms": r.measured_ms, "mes": r.mes, "mes_measured": r.mes_measured,
                   "accuracy": r.accuracy, "accuracy_source": r.accuracy_source, "pareto": r.pareto,
                   "resolution": r.resolution, "arch": r.arch, "digest": r.digest}
            for g in GROUP_ORDER:
                if any(g in x.per_group_ms for x in self.rows):
                    rec[f"{g}_ms"] = r.per_group_ms.get(g)
            rec.update(r.metric_values)
            rec["mes_constants"] = self.constants_line()
            recs.append(rec)
        return pd.DataFrame(recs)

    def json_rows(self) -> list[dict[str, Any]]:
        constants = self.mes.constants()
        out = []
        for r in self.rows:
            d = r.to_dict()
            d["mes_constants"] = constants
            if self.mes_measured is not None:
                d["mes_measured_constants"] = self.mes_measured.constants()
            out.append(d)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "table": self.table, "device": self.device,
                "estimate_method": self.estimate_method, "measured_device": self.measured_device,
                "mes_constants": self.mes.constants(), "mes_line": self.constants_line(),
                "mes_measured_constants": None if self.mes_measured is None else self.mes_measured.constants(),
                "notes": self.notes, "rows": self.json_rows()}


AccuracyFn = Callable[[Candidate], AccuracyEntry | None]


def build_report(candidates: Sequence[Candidate], table: LatencyTable, mes: MES, *,
                 accuracy: AccuracyFn | None = None, measured: dict[str, float] | None = None,
                 mes_measured: MES | None = None, measured_device: str | None = None,
                 metrics: dict[str, dict[str, float]] | None = None, title: str = "MES report",
                 notes: Sequence[str] = ()) -> MESReport:
    """Estimate, score, flag and rank `candidates` (see the module docstring for the conventions)."""
    if not candidates:
        raise UsageError("no candidates to report on")
    est = LatencyEstimator(table)
    estimates: list[Estimate] = [est.estimate(c) for c in candidates]  # raises naming missing blocks
    measured = measured or {}
    rows = []
    for c, e in zip(candidates, estimates):
        params, macs = c.params(), c.macs()
        values: dict[str, float] = {"params": params, "macs": macs, "latency": e.latency_ms,
                                    "weights_mb": weights_mb(params)}
        extra = (metrics or {}).get(c.name, {})
        values.update(extra)
        acc = accuracy(c) if accuracy else None
        row = CandidateRow(c.name, c.resolution, params, macs, e.latency_ms, mes(values), e.plain_sum_ms,
                           e.per_group(), accuracy=acc.top1 if acc else None,
                           accuracy_source=acc.source if acc else None,
                           arch=c.arch.compact() if c.arch is not None else None,
                           digest=c.arch.digest()[:16] if c.arch is not None else None,
                           metric_values={k: v for k, v in extra.items()}, typical_ms=e.typical_ms)
        if c.name in measured:
            row.measured_ms = measured[c.name]
            row.mes_measured = (mes_measured or mes)({**values, "latency": measured[c.name]})
        rows.append(row)
    all_measured = all(r.measured_ms is not None for r in rows)
    costs = [r.measured_ms if all_measured else r.latency_ms for r in rows]
    for r, flag in zip(rows, pareto_flags(costs, [r.accuracy for r in rows])):
        r.pareto = flag
    key = (lambda r: -r.mes_measured) if all_measured else (lambda r: -r.mes)
    rows.sort(key=key)
    for i, r in enumerate(rows, start=1):
        r.rank = i
    note_list = list(notes)
    if table.meta.get("synthetic"):
        note_list.append("the latency table is SYNTHETIC (made-up costs for tests/demos), not a measurement")
    return MESReport(title, rows, mes, table.label(), table.meta.get("device_id"), estimates[0].method,
                     mes_measured if measured else None, measured_device, note_list)


def display_frame(report: MESReport) -> pd.DataFrame:
    df = report.to_frame()
    keep = ["rank", "name", "params", "macs", "latency_ms", "typical_ms"]
    if report.measured:
        keep += ["measured_ms"]
    keep += ["mes"] + (["mes_measured"] if report.measured else []) + ["accuracy", "pareto", "accuracy_source"]
    keep += [c for c in df.columns if c.endswith("_ms") and c not in keep and c not in ("measured_ms", "latency_ms", "typical_ms")]
    keep += list(report.rows[0].metric_values)
    out = df[[c for c in dict.fromkeys(keep) if c in df.columns]].copy()
    out["macs"] = [f"{m / 1e9:.3f} G" for m in out["macs"]]
    out["pareto"] = [{True: "yes", False: "no"}.get(p, "") for p in out["pareto"]]
    return out


def header_lines(report: MESReport) -> list[str]:
    lines = [f"latency table: {report.table} (device {report.device}); estimate: {report.estimate_method}",
             f"MES constants: {report.constants_line()}"]
    if report.measured_device:
        lines.append(f"measured on: {report.measured_device}")
    lines.append("ranked by " + ("measured MES" if all(r.measured_ms is not None for r in report.rows) else "MES")
                 + "; Pareto = no other candidate is both faster and more accurate")
    return lines + [f"note: {n}" for n in report.notes]


# -- per-block latency report (the builder's view of one model) --------------------------------------------
@dataclass
class LatencyReport:
    name: str
    table: str
    params: int
    latency_ms: float
    plain_sum_ms: float
    method: str
    blocks: list[dict[str, Any]]
    per_stage_ms: dict[str, float]
    mes: float
    mes_constants: dict[str, Any]
    mes_line: str
    arch: dict[str, Any] | None = None
    typical_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_report(candidate: Candidate | Arch, table: LatencyTable, mes: MES | None = None) -> LatencyReport:
    """Estimated ms per block and per stage, the total and the MES of one model from a table.

    Per-block `est_ms` spreads the whole estimate (overhead model and calibration included) over the
    blocks in proportion to their net cost, so the blocks add up to `latency_ms`."""
    from latbench.efficiency.score import MESConfig, resolve

    if isinstance(candidate, Arch):
        candidate = Candidate(candidate.label(), candidate.resolution, arch=candidate)
    mes = mes or resolve(MESConfig(), table)
    e = LatencyEstimator(table).estimate(candidate)
    raw = sum(b.total_ms for b in e.blocks)
    order = {c.key: i for i, c in reversed(list(enumerate(candidate.blocks())))}
    blocks = []
    for b in sorted(e.blocks, key=lambda b: order.get(b.key, 0)):
        share = b.total_ms / raw * e.latency_ms if raw > 0 else math.nan
        blocks.append({"key": b.key, "kind": b.kind, "group": b.group, "count": b.count, "block_ms": b.block_ms,
                       "overhead_ms": b.overhead_ms, "net_ms": b.total_ms, "est_ms": share})
    per_group = e.per_group()
    per_stage = {g: per_group[g] for g in GROUP_ORDER if g in per_group}
    params = candidate.params()
    score = mes({"params": params, "latency": e.latency_ms, "weights_mb": weights_mb(params),
                 **({"macs": candidate.macs()} if any(m.getter == "macs" for m in mes.metrics) else {})})
    return LatencyReport(candidate.name, table.label(), params, e.latency_ms, e.plain_sum_ms, e.method, blocks,
                         per_stage, score, mes.constants(), mes.describe(),
                         candidate.arch.to_dict() if candidate.arch is not None else None, e.typical_ms)
