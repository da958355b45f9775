"""Which per-round statistic, and which combination of rounds, resists bursty slowdowns best?

Measures a set of table entries on the CPU runner (pinned to one core) in many interleaved
rounds: quiet rounds first (the reference), then rounds with the burst hog of
`benchmarks/disturb.py` pinned to the same core, then quiet rounds again (to see how far the
host itself moved). Every round's raw samples are saved, so the analysis can replay any rule:

    .venv/bin/python benchmarks/study_round_statistics.py measure --out study.json
    .venv/bin/python benchmarks/study_round_statistics.py analyse study.json

The analysis draws many 3-round builds from the disturbed rounds, applies each (statistic,
combination) rule, re-measuring (drawing more disturbed rounds) when a consensus rule asks for
it, and reports the error of each entry against the same statistic taken over the quiet rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def entries(resolution: int = 224):
    from latbench.blocks.configs import (
        AttnConfig,
        AttnDownConfig,
        EmbedConfig,
        FFNConfig,
        HeadConfig,
        StemConfig,
    )

    return [StemConfig(resolution, 32), FFNConfig(resolution, 1, 32, 4), FFNConfig(resolution, 2, 48, 4),
            FFNConfig(resolution, 3, 96, 3), FFNConfig(resolution, 3, 144, 4), FFNConfig(resolution, 4, 176, 4),
            FFNConfig(resolution, 4, 384, 2), AttnConfig(resolution, 3, 96), AttnConfig(resolution, 3, 144),
            AttnConfig(resolution, 3, 192), AttnConfig(resolution, 4, 176), AttnConfig(resolution, 4, 288),
            EmbedConfig(resolution, 1, 32, 48), EmbedConfig(resolution, 2, 48, 96),
            AttnDownConfig(resolution, 96, 176), AttnDownConfig(resolution, 144, 288),
            HeadConfig(resolution, 176), HeadConfig(resolution, 384)]


def measure(args) -> int:
    from disturb import Disturbance

    from device_runners.cpu import CpuRunner
    from latbench.measuring.measurement import SamplingPolicy
    from latbench.measuring.session import export_artifacts

    configs = entries()
    arts = export_artifacts(configs, "onnx", 2, None, False)
    policy = SamplingPolicy(time_cap_s=args.time_cap, warmup_time_s=0.05, min_time_s=min(0.3, args.time_cap))
    runner = CpuRunner(core_mask=args.core_mask)
    prepared = {c.key: runner.prepare(arts[c.key].path, arts[c.key].content_hash, label=c.key) for c in configs}
    rounds: list[dict] = []
    log = Path(args.out).with_suffix(".bursts.jsonl")
    log.unlink(missing_ok=True)

    def one_round(phase: str, i: int) -> None:
        order = sorted(prepared)
        random.Random(f"{phase}:{i}").shuffle(order)
        for key in order:
            t0 = time.time()
            m = runner.measure(prepared[key], policy)
            rounds.append({"phase": phase, "round": i, "key": key, "t0": t0, "t1": time.time(),
                           "samples": m.samples_ms})
        print(f"{phase} round {i} done", flush=True)

    for i in range(args.quiet):
        one_round("quiet", i)
    cores = [int(c) for c in range(64) if int(args.core_mask, 16) >> c & 1]
    with Disturbance(cores=cores, seed=args.seed, log=log):
        for i in range(args.disturbed):
            one_round("disturbed", i)
    for i in range(args.quiet_after):
        one_round("quiet_after", i)
    Path(args.out).write_text(json.dumps({"rounds": rounds, "core_mask": args.core_mask,
                                          "time_cap": args.time_cap}))
    return 0


# -- statistics and combinations ------------------------------------------------------------------
def q(samples: list[float], p: float) -> float:
    s = sorted(samples)
    pos = (len(s) - 1) * p
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


STATS = {
    "median": lambda s: q(s, 0.5),
    "p25": lambda s: q(s, 0.25),
    "p10": lambda s: q(s, 0.10),
    "p5": lambda s: q(s, 0.05),
    "p2": lambda s: q(s, 0.02),
    "min": min,
}


def median_of(values: list[float], _tol: float, _quorum: int) -> tuple[float, bool]:
    return statistics.median(values), True


def min_of(values: list[float], _tol: float, _quorum: int) -> tuple[float, bool]:
    return min(values), True


def consensus(values: list[float], tol: float, quorum: int) -> tuple[float, bool]:
    """latbench's rule: accepted when the fastest value and `quorum - 1` others agree within
    `tol` (the median of the agreeing values); otherwise (the fastest value, False)."""
    s = sorted(values)
    members = [v for v in s if v <= s[0] * (1 + tol)]
    if len(members) >= quorum:
        return statistics.median(members), True
    return s[0], False


COMBOS = {"median-of-rounds": median_of, "min-of-rounds": min_of, "consensus": consensus}


def analyse(args) -> int:
    data = json.loads(Path(args.study).read_text())
    by: dict[tuple[str, str], list[list[float]]] = {}
    for r in data["rounds"]:
        by.setdefault((r["phase"], r["key"]), []).append(r["samples"])
    keys = sorted({k for _, k in by})
    rng = random.Random(0)
    print(f"{len(keys)} entries; quiet rounds {len(by[('quiet', keys[0])])}, disturbed "
          f"{len(by[('disturbed', keys[0])])}, quiet after {len(by.get(('quiet_after', keys[0]), []))}")
    for sname, stat in STATS.items():
        # The truth is the undisturbed speed: on a host whose slowdowns last whole rounds, the
        # fast cluster of all quiet rounds (before and after), not their median.
        quiet_all = {k: [stat(s) for s in by[("quiet", k)] + by.get(("quiet_after", k), [])] for k in keys}
        ref = {k: consensus(v, args.tol, max(2, len(v) // 4))[0] for k, v in quiet_all.items()}
        after = {k: statistics.median(stat(s) for s in by[("quiet_after", k)]) for k in keys
                 if ("quiet_after", k) in by}
        quiet_cv = statistics.median(
            statistics.pstdev([stat(s) for s in by[("quiet", k)]]) / ref[k] for k in keys)
        drift = statistics.median(after[k] / ref[k] - 1 for k in after) if after else float("nan")
        dist_cv = statistics.median(
            statistics.pstdev([stat(s) for s in by[("disturbed", k)]]) / ref[k] for k in keys)
        print(f"\n[{sname}] quiet CV of round values (median over entries) {quiet_cv * 100:.2f} %, disturbed "
              f"{dist_cv * 100:.2f} %; quiet-after vs quiet {drift * 100:+.2f} %")
        for cname, combo in COMBOS.items():
            for tol in ([args.tol] if cname == "consensus" else [0.0]):
                errs, extra_rounds, flagged = [], [], 0
                for _ in range(args.trials):
                    for k in keys:
                        pool = [stat(s) for s in by[("disturbed", k)]]
                        rng.shuffle(pool)
                        n = args.rounds
                        while True:
                            value, ok = combo(pool[:n], tol, args.quorum)
                            if ok or n >= min(args.max_rounds, len(pool)):
                                break
                            n += 1
                        flagged += not ok
                        extra_rounds.append(n - args.rounds)
                        errs.append(abs(value / ref[k] - 1))
                errs.sort()
                label = f"{cname}" + (f" (tol {tol:.0%}, quorum {args.quorum})" if cname == "consensus" else "")
                print(f"  {label:38s} median |err| {statistics.median(errs) * 100:5.2f} %  p95 "
                      f"{q(errs, 0.95) * 100:5.2f} %  max {errs[-1] * 100:5.2f} %  >5 %: "
                      f"{sum(e > 0.05 for e in errs) / len(errs):5.1%}  extra rounds/entry "
                      f"{statistics.mean(extra_rounds):.2f}  never agreed {flagged / len(errs):.1%}")
    return 0


def analyse_anchors(args) -> int:
    """Does normalising by anchors help? Within the disturbed phase (each round by the anchor's
    value in the same round) and across phases (quiet_after vs quiet: one time-base factor)."""
    data = json.loads(Path(args.study).read_text())
    stat = STATS[args.statistic]
    vals: dict[tuple[str, str, int], float] = {}
    for r in data["rounds"]:
        vals[(r["phase"], r["key"], r["round"])] = stat(r["samples"])
    keys = sorted({k for _, k, _ in vals})
    anchors = {"ffn": "ffn-r224-s3-c144-e4", "mhsa": "mhsa-r224-s3-c96"}
    rounds = {p: sorted({i for ph, _, i in vals if ph == p}) for p in ("quiet", "disturbed", "quiet_after")}
    def level(phase: str, k: str) -> float:  # the consensus of a phase's rounds, as a session sees them
        return consensus([vals[(phase, k, i)] for i in rounds[phase]], 0.02, 2)[0]

    ref = {k: level("quiet", k) for k in keys}
    print(f"statistic {args.statistic}; anchors {anchors}; levels: consensus of each phase's rounds")
    # Within the disturbed phase: per-round value vs reference, raw and normalised per round.
    for label, names in (("none", []), ("ffn", ["ffn"]), ("mhsa", ["mhsa"]), ("both (median)", ["ffn", "mhsa"])):
        errs = []
        for i in rounds["disturbed"]:
            f = statistics.median(ref[anchors[n]] / vals[("disturbed", anchors[n], i)] for n in names) if names else 1
            errs += [abs(vals[("disturbed", k, i)] * f / ref[k] - 1) for k in keys if k not in anchors.values()]
        errs.sort()
        print(f"  per-round normalisation [{label:13s}] median |err| {statistics.median(errs) * 100:5.2f} %  "
              f"p90 {q(errs, 0.9) * 100:5.2f} %")
    # Across phases: consensus-like level per phase (median of round values), entry ratio after/before.
    if rounds["quiet_after"]:
        after = {k: level("quiet_after", k) for k in keys}
        ratios = {k: after[k] / ref[k] for k in keys}
        for label, names in (("none", []), ("ffn", ["ffn"]), ("mhsa", ["mhsa"]), ("both (median)", ["ffn", "mhsa"])):
            f = statistics.median(1 / ratios[anchors[n]] for n in names) if names else 1.0
            errs = sorted(abs(ratios[k] * f - 1) for k in keys if k not in anchors.values())
            print(f"  session factor [{label:13s}] factor {f:.4f}: entries after/before median |dev| "
                  f"{statistics.median(errs) * 100:5.2f} %, max {errs[-1] * 100:5.2f} %")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", default="study.json")
    m.add_argument("--quiet", type=int, default=5)
    m.add_argument("--disturbed", type=int, default=8)
    m.add_argument("--quiet-after", type=int, default=3)
    m.add_argument("--core-mask", default="1")
    m.add_argument("--time-cap", type=float, default=1.0)
    m.add_argument("--seed", type=int, default=1)
    a = sub.add_parser("analyse")
    a.add_argument("study")
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--max-rounds", type=int, default=8)
    a.add_argument("--tol", type=float, default=0.03)
    a.add_argument("--quorum", type=int, default=2)
    a.add_argument("--trials", type=int, default=200)
    b = sub.add_parser("anchors")
    b.add_argument("study")
    b.add_argument("--statistic", default="p5", choices=sorted(STATS))
    args = ap.parse_args()
    return {"measure": measure, "analyse": analyse, "anchors": analyse_anchors}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
