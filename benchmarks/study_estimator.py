"""Which per-round statistic makes the best *estimates*? Replays a built table and a validation's
raw measurements under several consensus rules (no measuring).

Entry stability (benchmarks/study_round_statistics.py) is one half of the choice; the other is
how well the overhead model turns entries into whole-model estimates. Both the table and the
validated models are re-derived with each statistic, so each comparison is like for like:

    .venv/bin/latbench lut validate TABLE --samples 30 --keep-journal VDIR
    .venv/bin/python benchmarks/study_estimator.py TABLE VDIR
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from latbench.blocks.candidates import Candidate
    from latbench.estimation.estimator import LatencyEstimator
    from latbench.estimation.validate import accuracy_figures
    from latbench.measuring.consensus import ROUND_STATISTICS, ConsensusRule
    from latbench.measuring.journal import Journal
    from latbench.measuring.session import round_values
    from latbench.measuring.timebase import anchor_levels, session_factor
    from latbench.space import Arch
    from latbench.tables.build import derive_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("validation", help="directory of pass*.sqlite journals (lut validate --keep-journal)")
    ap.add_argument("--tolerance", type=float, default=0.02)
    args = ap.parse_args()
    passes = sorted(Path(args.validation).glob("pass*.sqlite"))
    print(f"table {args.table}; {len(passes)} validation passes")
    for stat in ROUND_STATISTICS:
        rule = ConsensusRule(statistic=stat, tolerance=args.tolerance)
        with Journal(Path(args.table) / "journal.sqlite") as j, tempfile.TemporaryDirectory() as tmp:
            table = derive_table(j, Path(tmp), consensus=rule)
            levels = anchor_levels([a for a in j.anchors() if a.session == (j.get_meta("time_base") or {}).get(
                "session")], rule)
        est = LatencyEstimator(table)
        per_pass: list[dict[str, float]] = []
        cands: dict[str, Candidate] = {}
        for path in passes:
            with Journal(path) as pj:
                sessions = {s["session"] for s in pj.sessions()}
                factor = 1.0
                for s in sessions:
                    f = session_factor(anchor_levels(pj.anchors(s), rule), levels) if levels else None
                    factor = f or 1.0
                values = {}
                for key, rows in pj.rows("model").items():
                    values[key] = rule.decide(round_values(rows, rule, {})).value * factor
                    fields = rows[0].fields
                    arch = Arch.from_dict(fields["arch"], source="journal")
                    cands[key] = Candidate(fields["name"], arch.resolution, arch=arch)
                per_pass.append(values)
        keys = sorted(cands)
        measured = [statistics.fmean(p[k] for p in per_pass) for k in keys]
        estimates = [est.estimate(cands[k]).latency_ms for k in keys]
        plain = [est.estimate(cands[k]).plain_sum_ms for k in keys]
        noise = [(max(p[k] for p in per_pass) - min(p[k] for p in per_pass)) / m for k, m in zip(keys, measured)]
        f = accuracy_figures(estimates, measured)
        fp = accuracy_figures(plain, measured)
        print(f"[{stat:6s}] scale x{table.overhead.get('scale', 1):.4f}  latbench: mean |err| "
              f"{f['mean_abs_pct_error']:5.2f} %  max {f['max_abs_pct_error']:5.2f} %  bias {f['bias_pct']:+5.2f} %  "
              f"within 5 % {f['within_5pct']:4.0%}  10 % {f['within_10pct']:4.0%}  tau {f['kendall_tau']:.3f} | "
              f"plain sum {fp['mean_abs_pct_error']:5.2f} % | noise median {100 * statistics.median(noise):.2f} %, "
              f"max {100 * max(noise):.2f} % | flagged {len(table.flagged())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
