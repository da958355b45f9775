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

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from latbench.candidates import Candidate
from latbench.errors import UsageError
from latbench.estimator import Estimate, LatencyEstimator
from latbench.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from latbench.mes import MES
from latbench.oracles import AccuracyEntry
from latbench.space import Arch
from latbench.tables import LatencyTable

GROUP_ORDER = ["stem", "stage1", "stage2", "stage3", "stage4", "head", "model"]
PLOTS = ("accuracy_latency", "latency_breakdown")


# -- Pareto ------------------------------------------------------------------------------------------
def pareto_flags(costs: Sequence[float], accuracies: Sequence[float | None]) -> list[bool | None]:
    """Pareto optimality for (lower cost, higher accuracy); None where the accuracy is unknown."""
    out: list[bool | None] = []
    pts = [(c, a) for c, a in zip(costs, accuracies)]
    for c, a in pts:
        if a is None:
            out.append(None)
            continue
        dominated = any(a2 is not None and c2 <= c and a2 >= a and (c2 < c or a2 > a) for c2, a2 in pts)
        out.append(not dominated)
    return out


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
                   "measured_ms": r.measured_ms, "mes": r.mes, "mes_measured": r.mes_measured,
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
                                    "weights_mb": params * 4 / 1e6}
        extra = (metrics or {}).get(c.name, {})
        values.update(extra)
        acc = accuracy(c) if accuracy else None
        row = CandidateRow(c.name, c.resolution, params, macs, e.latency_ms, mes(values), e.plain_sum_ms,
                           e.per_group(), accuracy=acc.top1 if acc else None,
                           accuracy_source=acc.source if acc else None,
                           arch=c.arch.compact() if c.arch is not None else None,
                           digest=c.arch.digest()[:16] if c.arch is not None else None,
                           metric_values={k: v for k, v in extra.items()})
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


# -- measuring ---------------------------------------------------------------------------------------
def measure_candidates(candidates: Sequence[Candidate], runner, *, rounds: int = 3, warmup: int = 10,
                       runs: int | None = None, seed: int = 0,
                       progress: Callable[[str, int, int], None] | None = None) -> tuple[dict[str, float], dict]:
    """End-to-end latency (ms) of each candidate on an open device runner, keyed by candidate name,
    and the device's provenance (one measuring session: interleaved rounds until they agree)."""
    from latbench.validate import measure_models

    timings = measure_models(candidates, runner, rounds=rounds, warmup=warmup, runs=runs, seed=seed,
                             progress=progress)
    return {c.name: timings.passes[0][c.key] for c in candidates}, timings.device


# -- plots ---------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Figure without pyplot: Agg canvas, no global state

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, stem: Path) -> dict[str, Path]:
    out = {}
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
        path = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        out[fmt] = path
    return out


def _marker(source: str | None) -> str:
    if source is None:
        return "o"
    if source.startswith("published"):
        return "s"
    return "x" if "PROXY" in source else "o"


def _labelled(n: int, most: int = 12) -> set[int]:
    """Which of n points get a name label (all when few; first, last and evenly spaced otherwise)."""
    if n <= most:
        return set(range(n))
    return {round(i * (n - 1) / (most - 1)) for i in range(most)}


def plot_accuracy_latency(report: MESReport, stem: Path) -> dict[str, Path]:
    import numpy as np

    fig = _figure(11, 4.6)
    ax, ax2 = fig.subplots(1, 2)
    use_measured = all(r.measured_ms is not None for r in report.rows)
    lat = [r.measured_ms if use_measured else r.latency_ms for r in report.rows]
    lat_label = "measured latency (ms)" if use_measured else "estimated latency (ms)"
    with_acc = [(x, r) for x, r in zip(lat, report.rows) if r.accuracy is not None]
    show = _labelled(len(report.rows))
    if with_acc:
        shown = _labelled(len(with_acc))
        for i, (x, r) in enumerate(with_acc):
            ax.scatter([x], [r.accuracy], marker=_marker(r.accuracy_source), color="C0" if r.pareto else "C7", zorder=3)
            if i in shown:
                ax.annotate(r.name, (x, r.accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((x, r.accuracy) for x, r in with_acc if r.pareto)
        if front:
            xs, ys = zip(*front)
            ax.step(xs, ys, where="post", color="C0", lw=1.2, label="Pareto front")
            ax.legend(fontsize=8, loc="lower right")
        proxy = any("PROXY" in (r.accuracy_source or "") for _, r in with_acc)
        ax.set_ylabel("top-1 (%)" + (" - PROXY, not measured" if proxy else ""))
    else:
        ax.text(0.5, 0.5, "no accuracy figures\n(give --accuracy FILE)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(lat_label)
    ax.set_title("accuracy vs latency (squares: published figures)", fontsize=9)
    ax.grid(alpha=0.3)

    # Latency vs size, where MES iso-lines are straight lines on log-log axes.
    params = np.array([r.params for r in report.rows], dtype=float)
    lats = np.array(lat, dtype=float)
    mes = report.mes_measured if use_measured and report.mes_measured is not None else report.mes
    size, latm = mes.metric("size"), mes.metric("latency")
    accs = [r.accuracy for r in report.rows]
    colors = [a if a is not None else np.nan for a in accs]
    sc = ax2.scatter(params / 1e6, lats, c=colors, cmap="viridis", zorder=3, edgecolors="k", linewidths=0.4,
                     plotnonfinite=True)
    if any(a is not None for a in accs):
        fig.colorbar(sc, ax=ax2, label="top-1 (%)")
    for i, (p, x, r) in enumerate(zip(params, lats, report.rows)):
        if i in show:
                ax2.annotate(r.name, (p / 1e6, x), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 3 rather than 3x10^0 on log axes
    for axis in (ax2.xaxis, ax2.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    if size is not None and latm is not None and latm.alpha != 0:
        scores = [r.mes_measured if use_measured and r.mes_measured is not None else r.mes for r in report.rows]
        lo, hi = min(scores), max(scores)
        levels = np.geomspace(lo / 1.5, hi * 1.5, 5) if hi > lo else [lo / 2, lo, lo * 2]
        pgrid = np.geomspace(params.min() / 2, params.max() * 2, 100)
        for level in levels:
            # score * (p/Us)^-as * (l/Ul)^-al = level  =>  l = Ul * (score/level * (p/Us)^-as)^(1/al)
            lgrid = latm.unit * (mes.score / level * (pgrid / size.unit) ** (-size.alpha)) ** (1 / latm.alpha)
            ax2.plot(pgrid / 1e6, lgrid, color="C3", lw=0.8, alpha=0.6)
            ax2.annotate(f"MES {level:.3g}", (pgrid[-1] / 1e6, lgrid[-1]), fontsize=7, color="C3", ha="right")
        ax2.set_xlim(pgrid[0] / 1e6, pgrid[-1] / 1e6)
        ax2.set_ylim(lats.min() / 2, lats.max() * 2)
    others = [m.name for m in mes.metrics if m.name not in ("size", "latency")]
    ax2.set_title("MES iso-lines" + (f" ({', '.join(others)} at their unit)" if others else ""), fontsize=9)
    ax2.set_xlabel("parameters (M)")
    ax2.set_ylabel(lat_label)
    ax2.grid(alpha=0.3, which="both")
    fig.suptitle(report.mes.describe(), fontsize=7)
    return _save(fig, stem)


def plot_breakdown(report: MESReport, stem: Path, most: int = 40) -> dict[str, Path]:
    rows = report.rows
    subset = len(rows) > most
    if subset:  # a readable figure: evenly spaced rows, first and last included
        rows = [rows[i] for i in sorted(_labelled(len(rows), most))]
    fig = _figure(9, 1.2 + 0.3 * len(rows))
    ax = fig.subplots()
    groups = [g for g in GROUP_ORDER if any(g in r.per_group_ms for r in rows)]
    names = [r.name for r in rows]
    left = [0.0] * len(rows)
    for i, g in enumerate(groups):
        vals = [r.per_group_ms.get(g, 0.0) for r in rows]
        ax.barh(names, vals, left=left, label=g, color=f"C{i}")
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set_xlabel("estimated latency (ms)")
    ax.set_title(f"latency breakdown per stage ({report.table})"
                 + (f"; {len(rows)} of {len(report.rows)} candidates" if subset else ""), fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, stem)


# -- writing ---------------------------------------------------------------------------------------------
def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df.to_dict("records"):
        lines.append("| " + " | ".join(_cell(rec[c]) for c in cols) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def _display_frame(report: MESReport) -> pd.DataFrame:
    df = report.to_frame()
    keep = ["rank", "name", "params", "macs", "latency_ms"]
    if report.measured:
        keep += ["measured_ms"]
    keep += ["mes"] + (["mes_measured"] if report.measured else []) + ["accuracy", "pareto", "accuracy_source"]
    keep += [c for c in df.columns if c.endswith("_ms") and c not in keep and c not in ("measured_ms", "latency_ms")]
    keep += list(report.rows[0].metric_values)
    out = df[[c for c in dict.fromkeys(keep) if c in df.columns]].copy()
    out["macs"] = [f"{m / 1e9:.3f} G" for m in out["macs"]]
    out["pareto"] = [{True: "yes", False: "no"}.get(p, "") for p in out["pareto"]]
    return out


def _header_lines(report: MESReport) -> list[str]:
    lines = [f"latency table: {report.table} (device {report.device}); estimate: {report.estimate_method}",
             f"MES constants: {report.constants_line()}"]
    if report.measured_device:
        lines.append(f"measured on: {report.measured_device}")
    lines.append("ranked by " + ("measured MES" if all(r.measured_ms is not None for r in report.rows) else "MES")
                 + "; Pareto = no other candidate is both faster and more accurate")
    return lines + [f"note: {n}" for n in report.notes]


def check_out_dir(out_dir: str | Path) -> Path:
    """Fail early (before any work) when the output directory cannot be one."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output directory {out_dir} is a file; give a directory with --out")
    return out_dir


def write_report(report: MESReport, out_dir: str | Path) -> dict[str, Path]:
    """report.md, report.html (self-contained), report.csv, report.json and the plots (PNG + SVG)."""
    out_dir = check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, fn in (("accuracy_latency", plot_accuracy_latency), ("latency_breakdown", plot_breakdown)):
        for fmt, path in fn(report, out_dir / name).items():
            files[f"{name}.{fmt}"] = path
    frame = report.to_frame()
    atomic_write_text(out_dir / "report.csv", frame.to_csv(index=False))
    files["report.csv"] = out_dir / "report.csv"
    atomic_write_json(out_dir / "report.json", report.to_dict())
    files["report.json"] = out_dir / "report.json"
    display = _display_frame(report)

    md = [f"# {report.title}", ""] + [f"- {line}" for line in _header_lines(report)] + ["", _md_table(display), ""]
    for name in PLOTS:
        md += [f"![{name}]({name}.png)", ""]
    for title, df in report.extra_sections:
        md += [f"## {title}", "", _md_table(df), ""]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    files["report.md"] = out_dir / "report.md"

    def uri(path: Path, mime: str) -> str:
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(2){text-align:left}"
             "img{max-width:100%}.note{color:#a40}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1><ul>"]
    for line in _header_lines(report):
        cls = " class='note'" if line.startswith("note:") else ""
        parts.append(f"<li{cls}>{html.escape(line)}</li>")
    parts.append("</ul>")
    parts.append(display.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0))
    for name in PLOTS:
        parts.append(f"<h2>{name.replace('_', ' ')}</h2><img alt='{name}' src='{uri(files[name + '.svg'], 'image/svg+xml')}'>")
    for title, df in report.extra_sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(df.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0))
    parts.append("</body></html>")
    atomic_write_text(out_dir / "report.html", "\n".join(parts))
    files["report.html"] = out_dir / "report.html"
    return files


def print_report(report: MESReport) -> None:
    from latbench.commands._output import console, print_table

    df = _display_frame(report)
    cols = [c for c in df.columns if c != "accuracy_source" and not (c.endswith("_ms") and c not in
                                                                      ("latency_ms", "measured_ms"))]
    print_table(report.title, cols, df[cols].itertuples(index=False))
    for line in _header_lines(report):
        console().print(line, highlight=False)
    sources = sorted({r.accuracy_source for r in report.rows if r.accuracy_source})
    for s in sources:
        console().print(f"accuracy source: {s}", highlight=False)


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print(self, console=None) -> None:
        from rich.table import Table

        from latbench.commands._output import console as make_console
        from latbench.commands._output import fmt

        con = console or make_console()
        t = Table(title=f"{self.name}: estimated latency per block ({self.table})")
        for col in ("stage", "block", "count", "isolated ms", "overhead ms", "est. ms", "share"):
            t.add_column(col, overflow="fold")
        for b in self.blocks:
            t.add_row(b["group"], b["key"], fmt(b["count"]), fmt(b["block_ms"]), fmt(b["overhead_ms"]),
                      fmt(b["est_ms"]), f"{b['est_ms'] / self.latency_ms:.1%}")
        con.print(t)
        stages = Table(title="per stage")
        stages.add_column("stage")
        stages.add_column("est. ms")
        for g, v in self.per_stage_ms.items():
            stages.add_row(g, fmt(v))
        stages.add_row("total", fmt(self.latency_ms))
        con.print(stages)
        con.print(f"params {self.params:,}; latency {self.latency_ms:.4g} ms ({self.method}); "
                  f"MES {self.mes:.4g}", highlight=False)
        con.print(self.mes_line, highlight=False)


def latency_report(candidate: Candidate | Arch, table: LatencyTable, mes: MES | None = None) -> LatencyReport:
    """Estimated ms per block and per stage, the total and the MES of one model from a table.

    Per-block `est_ms` spreads the whole estimate (overhead model and calibration included) over the
    blocks in proportion to their net cost, so the blocks add up to `latency_ms`."""
    from latbench.mes import MESConfig, resolve

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
    score = mes({"params": params, "latency": e.latency_ms, "weights_mb": params * 4 / 1e6,
                 **({"macs": candidate.macs()} if any(m.getter == "macs" for m in mes.metrics) else {})})
    return LatencyReport(candidate.name, table.label(), params, e.latency_ms, e.plain_sum_ms, e.method, blocks,
                         per_stage, score, mes.constants(), mes.describe(),
                         candidate.arch.to_dict() if candidate.arch is not None else None)
