"""Writing a report: report.md, a self-contained report.html (plots inlined as data URIs),
report.csv, report.json and the plots."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from latbench.core.fileio import atomic_write_json, atomic_write_text, writable_dir
from latbench.report.model import PLOTS, MESReport, display_frame, header_lines
from latbench.report.plots import plot_accuracy_latency, plot_breakdown


def md_table(df: pd.DataFrame) -> str:
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


def write_report(report: MESReport, out_dir: str | Path) -> dict[str, Path]:
    """report.md, report.html (self-contained), report.csv, report.json and the plots (PNG + SVG)."""
    out_dir = writable_dir(out_dir)
    files: dict[str, Path] = {}
    for name, fn in (("accuracy_latency", plot_accuracy_latency), ("latency_breakdown", plot_breakdown)):
        for fmt, path in fn(report, out_dir / name).items():
            files[f"{name}.{fmt}"] = path
    frame = report.to_frame()
    atomic_write_text(out_dir / "report.csv", frame.to_csv(index=False))
    files["report.csv"] = out_dir / "report.csv"
    atomic_write_json(out_dir / "report.json", report.to_dict())
    files["report.json"] = out_dir / "report.json"
    display = display_frame(report)

    md = [f"# {report.title}", ""] + [f"- {line}" for line in header_lines(report)] + ["", md_table(display), ""]
    for name in PLOTS:
        md += [f"![{name}]({name}.png)", ""]
    for title, df in report.extra_sections:
        md += [f"## {title}", "", md_table(df), ""]
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    files["report.md"] = out_dir / "report.md"

    def uri(path: Path, mime: str) -> str:
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(2){text-align:left}"
             "img{max-width:100%}.note{color:#a40}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1><ul>"]
    for line in header_lines(report):
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
