"""The files of a profile: profile.json, per_op_type.csv, per_block.csv, samples.csv, breakdown.png."""

from __future__ import annotations

from pathlib import Path

from latbench.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from latbench.measuring.profile import ProfileResult


def write_profile(result: ProfileResult, out_dir: str | Path) -> list[Path]:
    """profile.json, per_op_type.csv, per_block.csv (when known), samples.csv and a bar chart PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "profile.json", out / "per_op_type.csv", out / "samples.csv"]
    atomic_write_json(written[0], result.to_dict())
    atomic_write_text(written[1], pd.DataFrame(result.per_op_type, columns=["op_type", "ms", "share"]).to_csv(index=False))
    atomic_write_text(written[2], pd.DataFrame({"sample_ms": result.measurement.samples_ms}).to_csv(index=False))
    if result.per_block:
        written.append(out / "per_block.csv")
        atomic_write_text(written[-1], pd.DataFrame(result.per_block).to_csv(index=False))
    panels = [("per op type", result.per_op_type, "op_type")]
    if result.per_block:
        panels.append(("per block", result.per_block, "block"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 0.3 * max(len(p[1]) for p in panels) + 2))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, rows, label) in zip(axes, panels):
        rows = sorted(rows, key=lambda r: r["ms"])
        ax.barh([str(r[label]) for r in rows], [r["ms"] for r in rows], color="#4477aa")
        ax.set_xlabel("ms (profiled)")
        ax.set_title(f"{result.target} on {result.device_id}: {title}")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    written.append(out / "breakdown.png")
    atomic_write_bytes(written[-1], buf.getvalue())
    return written
