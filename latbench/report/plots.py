"""The report's figures: accuracy vs latency with the Pareto front, latency vs size with MES
iso-lines, and the per-stage latency breakdown (PNG and SVG, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

from latbench.core.fileio import atomic_write_bytes
from latbench.report.model import GROUP_ORDER, MESReport


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
