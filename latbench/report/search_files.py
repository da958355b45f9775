"""The files of a search: its trajectory, every evaluated action, the chosen and Pareto subnets as
arch files, and a report over the Pareto set."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from latbench.blocks.candidates import Candidate
from latbench.core.fileio import atomic_write_json, atomic_write_text, writable_dir
from latbench.report.model import build_report
from latbench.report.writers import write_report
from latbench.search.algorithm import Evaluation, SearchResult, trajectory_frame
from latbench.search.oracles import AccuracyEntry


def write_search(result: SearchResult, out_dir: str | Path, table, *, report: bool = True) -> dict[str, Path]:
    """trajectory.csv/.json, frontier.csv (every evaluated action), final.yaml, pareto/*.yaml and a
    report over the Pareto set (report.md/.html/.csv and plots)."""
    out = writable_dir(out_dir)
    files: dict[str, Path] = {}
    traj = trajectory_frame(result)
    atomic_write_text(out / "trajectory.csv", traj.to_csv(index=False))
    atomic_write_json(out / "trajectory.json", result.to_dict())
    atomic_write_text(out / "frontier.csv", pd.DataFrame([e.__dict__ for e in result.evaluations],
                                                        columns=list(Evaluation.__dataclass_fields__)).to_csv(index=False))
    files.update({n: out / n for n in ("trajectory.csv", "trajectory.json", "frontier.csv")})
    result.final.arch.save(out / "final.yaml")
    files["final.yaml"] = out / "final.yaml"
    pareto_dir = out / "pareto"
    for s in result.pareto():
        path = pareto_dir / f"{s.arch.name}.yaml"
        s.arch.save(path)
        files[f"pareto/{path.name}"] = path
    if report:
        steps = {s.arch.name: s for s in result.pareto()}
        cands = [Candidate(s.arch.name, s.arch.resolution, arch=s.arch, source="search") for s in steps.values()]
        label = result.oracle["label"]

        def accuracy(c: Candidate) -> AccuracyEntry:
            return AccuracyEntry(steps[c.name].accuracy, label)

        notes = [f"search target {result.target.describe()}, "
                 f"{'reached' if result.reached else 'NOT reached'} after {len(result.steps) - 1} steps; "
                 f"final subnet {result.final.arch.name}",
                 f"accuracy: {label}"] + result.notes
        rep = build_report(cands, table, result.mes, accuracy=accuracy, title="Search: Pareto set",
                           notes=notes)
        traj_view = traj[["step", "action", "params", "latency_ms", "mes", "accuracy", "ratio", "pareto", "arch"]]
        rep.extra_sections.append(("Search trajectory", traj_view))
        for name, path in write_report(rep, out).items():
            files[name] = path
    return files
