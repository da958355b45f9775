"""Lookup-table benchmark on the emulated CPU backend (prints figures; asserts nothing).

1. Builds the default-space table undisturbed, from a cold export cache: total wall time vs the
   time spent inside timed runs (goal: total <= 1.6x timed runs), and the consensus figures.
2. Rebuilds with nothing new (goal: <= 10 s).
3. Validates it on N random subnets plus S0-L in two separated passes, against the plain-sum and
   MACs-proportional baselines measured in the same run (goals: >= 95 % within +-5 % and 100 %
   within +-10 % of the pass mean, Kendall tau >= 0.95, ahead of both baselines).
4. With --disturb: builds the same table again while the burst hog of benchmarks/disturb.py runs
   on the build's core, and reports every entry's error against the undisturbed reference (goal:
   none above 5 %), for this build's rule and, replayed on the same journal, for the rule before
   consensus (median of three round medians, each normalised by the latest anchor reading). Then
   validates the disturbed table with the hog still running.
5. With --floor (and --keep DIR holding a finished run): builds the table a second time,
   undisturbed, and compares it with the first. Two undisturbed builds differ by the host's own
   build-to-build noise; the disturbed build's error against the reference means little below
   that floor, so the entries that miss 5 % are shown beside the second build's reading.

Both builds run pinned to one core (--core), so the hog really shares it. The two tables are put
on one time base by their anchors (the same blocks, measured in both builds).

    .venv/bin/python benchmarks/bench_lut.py [--samples 30] [--disturb] [--keep DIR] [--core 0]
    .venv/bin/python benchmarks/bench_lut.py --floor --keep DIR     # after a --disturb run into DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def build(out: Path, core: int | None, seed: int = 0, device: str = "cpu"):
    from device_runners import open_runner
    from latbench.blocks.candidates import sample_candidates
    from latbench.blocks.configs import space_blocks
    from latbench.space import SearchSpace
    from latbench.tables.build import BuildSettings, TableBuilder

    space = SearchSpace.default()
    settings = BuildSettings(seed=seed)
    configs = space_blocks(space, 224)
    from latbench.blocks.candidates import resolve_candidate

    configs.append(resolve_candidate("mobilenetv2_100").blocks()[0])
    calib = sample_candidates(space, 224, settings.calibration_models, settings.seed, purpose="calibration")
    opts = {} if core is None else {"core_mask": format(1 << core, "x")}
    with open_runner(device, **opts) as runner:
        res = TableBuilder(runner, out, settings).build(
            configs, space=space, resolution=224, calibration=calib)
    return res, space, configs, calib, settings, opts


def report_build(label: str, res) -> None:
    t = res.timings
    blocks = res.table.blocks
    extra = int((blocks["rounds"] - 3).clip(lower=0).sum())
    print(f"{label}: {len(blocks)} entries + {len(res.table.models)} calibration models, "
          f"{len(res.measured)} measurements ({extra} extra rounds for consensus/plausibility)")
    print(f"  total wall {t['total_s']:.1f} s; inside timed runs {t['timed_runs_s']:.1f} s -> ratio "
          f"{t['total_s'] / t['timed_runs_s']:.2f} (goal <= 1.6); export {t['export_s']:.1f} s, prepare "
          f"{t['prepare_s']:.1f} s, measure wall {t['measure_wall_s']:.1f} s")
    flagged = res.table.flagged()
    print(f"  consensus: {int(blocks['consensus'].astype(bool).sum())}/{len(blocks)} agreed; flagged "
          f"{len(flagged)}: {', '.join(f'{k} ({v})' for k, v in flagged.items()) or '-'}")
    print(f"  overhead model x{res.table.overhead.get('scale', 1):.4f} on "
          f"{', '.join(res.table.overhead.get('calibrated_on') or [])}")


def validate(table, samples: int, seed: int, opts: dict, label: str, keep: Path | None = None, device: str = "cpu"):
    from device_runners import open_runner
    from latbench.blocks.candidates import sample_candidates
    from latbench.core.fileio import atomic_write_json
    from latbench.estimation.validate import validate_table

    cands = sample_candidates(table.space(), 224, samples, seed)
    with open_runner(device, **opts) as runner:
        v = validate_table(table, runner, cands, seed=seed, journal_dir=keep)
    if keep is not None:
        atomic_write_json(keep / "validation.json", v.to_dict())
    print(f"{label}: {v.figures['n']} models ({samples} random subnets + S0-L), {v.seconds:.0f} s; noise floor "
          f"(pass to pass) median {v.noise['median_pct']:.2f} %, max {v.noise['max_pct']:.2f} %; "
          f"{v.noise['within_noise']:.0%} of errors within their own pass spread")
    for name, f in [("latbench", v.figures)] + list(v.baselines.items()):
        print(f"  {name:18s} mean |err| {f['mean_abs_pct_error']:5.2f} %  max {f['max_abs_pct_error']:5.2f} %  "
              f"bias {f['bias_pct']:+5.2f} %  within 5 % {f['within_5pct']:.0%}  within 10 % "
              f"{f['within_10pct']:.0%}  Kendall tau {f['kendall_tau']:.3f}")
    factors = v.noise.get("time_base_factors") or []
    if factors and all(factors):
        # The same run without the time base: each pass's values as measured (divided back).
        from latbench.estimation.validate import accuracy_figures
        from latbench.measuring.models import agreeing

        raw = [statistics.fmean(agreeing([p / f for p, f in zip(r["pass_ms"], factors) if p is not None]))
               for r in v.rows]
        f = accuracy_figures([r["latency_ms"] for r in v.rows], raw)
        print(f"  time-base factors per pass {', '.join(f'{x:.4f}' for x in factors)}; without them: mean |err| "
              f"{f['mean_abs_pct_error']:.2f} %, within 5 % {f['within_5pct']:.0%}, within 10 % "
              f"{f['within_10pct']:.0%}, bias {f['bias_pct']:+.2f} %")
    for r in sorted(v.rows, key=lambda r: -abs(r["error_pct"]))[:8]:
        print(f"    {r['name']:22s} measured {r['measured_ms']:7.3f} ms (passes "
              f"{'/'.join('-' if x is None else f'{x:.3f}' for x in r['pass_ms'])})  estimate {r['latency_ms']:7.3f} "
              f"({r['error_pct']:+5.1f} %)  plain sum ({r['plain_sum_error_pct']:+5.1f} %)")
    for w in v.warnings:
        print(f"  warning: {w}")
    return v


def old_rule_values(journal_path: Path) -> dict[str, float]:
    """The rule before consensus, replayed on a journal: the median of the first three rounds'
    medians, each normalised by the latest anchor reading before it (reference: the median of
    all anchor readings of the first anchor)."""
    from latbench.measuring.journal import Journal

    with Journal(journal_path) as j:
        anchors = j.anchors()
        first_key = anchors[0].key if anchors else None
        readings = sorted((a.measured_at, a.measurement.median) for a in anchors if a.key == first_key)
        reference = statistics.median(v for _, v in readings) if readings else None
        out = {}
        for key, rows in j.rows("block").items():
            vals = []
            for r in rows[:3]:
                before = [v for t, v in readings if t <= r.measured_at]
                a = before[-1] if before else None
                vals.append(r.measurement.median * reference / a if a and reference else r.measurement.median)
            out[key] = statistics.median(vals)
    return out


def alignment(reference, other) -> float:
    """The factor that puts `other`'s entries on `reference`'s time base (median anchor ratio)."""
    from latbench.measuring.timebase import session_factor

    levels = [t.meta["anchors"]["levels_ms"] or {} for t in (other, reference)]
    return session_factor(*levels) or 1.0


def entry_errors(values: dict[str, float], base: dict[str, float], factor: float) -> dict[str, float]:
    return {k: values[k] * factor / base[k] - 1 for k in base if k in values}


def print_errors(label: str, errs: dict[str, float]) -> None:
    blocks = {k: e for k, e in errs.items() if not k.startswith("empty-")}
    empties = {k: e for k, e in errs.items() if k.startswith("empty-")}
    for part, d in (("blocks and models", blocks), ("empty models", empties)):
        a = sorted((abs(e), k) for k, e in d.items())
        if not a:
            continue
        print(f"  {label} [{part}]: median |err| {statistics.median(x for x, _ in a) * 100:.2f} %, max "
              f"{a[-1][0] * 100:.2f} % ({a[-1][1]}), above 5 %: {sum(x > 0.05 for x, _ in a)}/{len(a)}")
    worst = sorted(blocks.items(), key=lambda kv: -abs(kv[1]))[:5]
    print("    worst: " + ", ".join(f"{k} {e * 100:+.1f} %" for k, e in worst))


def compare(reference, disturbed, old: dict[str, float], old_ref: dict[str, float]) -> None:
    align = alignment(reference.table, disturbed.table)
    print(f"time base: disturbed build's anchors read {1 / align - 1:+.2%} against the reference's; "
          "entries aligned by that factor")
    ref, new = reference.table.latency_ms(), disturbed.table.latency_ms()
    print_errors("this build (consensus)", entry_errors(new, ref, align))
    print_errors("before (median of 3 round medians, anchor-normalised)", entry_errors(old, old_ref, 1.0))


def floor(root: Path, core: int | None) -> None:
    """Build the table again undisturbed and read the disturbed build against both references."""
    from latbench.tables.table import LatencyTable

    if not (root / "reference" / "meta.json").is_file():
        raise SystemExit(f"--floor needs a finished run in {root} (run with --disturb --keep {root} first)")
    reference = LatencyTable.load(root / "reference")
    second, *_ = build(root / "reference-2", core)
    report_build("second undisturbed build", second)
    ref, ref2 = reference.latency_ms(), second.table.latency_ms()
    a2 = alignment(reference, second.table)
    print(f"floor: the second undisturbed build against the reference (anchors {1 / a2 - 1:+.2%}):")
    print_errors("undisturbed vs undisturbed", entry_errors(ref2, ref, a2))
    if not (root / "disturbed" / "meta.json").is_file():
        return
    disturbed = LatencyTable.load(root / "disturbed")
    dist = disturbed.latency_ms()
    ad = alignment(reference, disturbed)
    against_ref = entry_errors(dist, ref, ad)
    print_errors("disturbed vs reference", against_ref)
    print_errors("disturbed vs second undisturbed build", entry_errors(dist, ref2, alignment(second.table, disturbed)))
    misses = sorted((k for k, e in against_ref.items() if abs(e) > 0.05), key=lambda k: -abs(against_ref[k]))
    for k in misses:
        r2 = ref2.get(k, float("nan")) * a2
        print(f"    {k}: reference {ref[k]:.4f} ms, disturbed {dist[k] * ad:.4f} ({against_ref[k] * 100:+.1f} %), "
              f"second undisturbed {r2:.4f} ({(r2 / ref[k] - 1) * 100:+.1f} % vs reference, "
              f"{(dist[k] * ad / r2 - 1) * 100:+.1f} % disturbed vs it)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--disturb", action="store_true", help="also build (and validate) under the burst hog")
    ap.add_argument("--core", type=int, default=0, help="pin builds and the hog to this core (-1: no pinning)")
    ap.add_argument("--keep", default=None, help="keep the tables under this directory")
    ap.add_argument("--skip-validate", action="store_true")
    ap.add_argument("--floor", action="store_true",
                    help="with --keep DIR of a finished --disturb run: build again undisturbed and compare")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lut-"))
    root = Path(args.keep) if args.keep else tmp
    os.environ.setdefault("LATBENCH_CACHE", str(tmp / "export-cache"))  # cold export cache by default
    core = None if args.core < 0 else args.core
    if args.floor:
        if not args.keep:
            raise SystemExit("--floor needs --keep DIR (the directory of a finished --disturb run)")
        floor(root, core)
        return 0
    from latbench.tables.build import TableBuilder

    ref, space, configs, calib, settings, opts = build(root / "reference", core)
    report_build("reference build (undisturbed)", ref)
    t0 = time.perf_counter()
    from device_runners import open_runner

    with open_runner("cpu", **opts) as runner:
        again = TableBuilder(runner, root / "reference", settings).build(
            configs, space=space, resolution=224, calibration=calib)
    print(f"rebuild with nothing new: {time.perf_counter() - t0:.1f} s, {len(again.measured)} measured (goal <= 10 s)")
    if not args.skip_validate:
        validate(again.table, args.samples, args.seed, opts, "validate (undisturbed)", root / "validation")
    if args.disturb:
        from disturb import Disturbance, bursts

        log = root / "bursts.jsonl"
        log.unlink(missing_ok=True)
        with Disturbance(cores=None if core is None else [core], seed=args.seed, log=log):
            dist, *_ = build(root / "disturbed", core)
            report_build("disturbed build (burst hog on the build's core)", dist)
            b = bursts(log)
            busy = sum(e - s for s, e in b)
            print(f"  hog: {len(b)} bursts, {busy:.0f} s busy of {dist.timings['total_s']:.0f} s")
            compare(ref, dist, old_rule_values(root / "disturbed" / "journal.sqlite"),
                    old_rule_values(root / "reference" / "journal.sqlite"))
            if not args.skip_validate:
                validate(dist.table, args.samples, args.seed + 1, opts, "validate the disturbed table (hog on)",
                         root / "validation-disturbed")
    print(json.dumps({"tables": str(root)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
