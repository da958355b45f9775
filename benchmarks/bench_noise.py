"""Noise benchmark: build the default-space table on simulated devices with other devices' noise.

For each noise profile of tests/fakes/noisy_device.py, builds the default-space table (blocks,
empty models, S0 and random subnets as calibration, MobileNetV2 whole as the MES unit) through the
real `TableBuilder` on a `NoisyRunner` whose true latencies are a deterministic script, and reports
against the ground truth:

* entries (blocks, not empty models) within +-3 % of their true fast value (and of their true
  typical value once tables carry a `typical_ms` column; else n/a), median/max entry error,
  flagged entries, rounds measured;
* the virtual build time (the device's clock) and its ratio to the quiet profile's;
* validation: 30 seeded random subnets of the space plus S0-L estimated from the table against
  their true fast (and typical, when estimates carry `typical_ms`) latency: share within +-5 % and
  +-10 %, mean |err|, Kendall tau.

With `--adapt N`, each profile's device is also adapted to (`lut adapt --budget N`, through the
real `TableAdapter`) from a scripted source device whose kinds run at other speeds
(SOURCE_FACTOR, SOURCE_EXPONENT), on a fresh device of the same profile: its measured entries
against their true fast value, its validation as above, and its virtual time against the full
build's on the same profile: how an adapt's few entries, with nothing to interleave, fare on a
noisy device.

Measuring is virtual (nothing sleeps), so a build takes seconds to a minute of CPU; exports go
through the export cache ($LATBENCH_CACHE, else the user's cache), paid once.

    .venv/bin/python benchmarks/bench_noise.py [--profiles quiet,vm-bursts] [--seed 0] [--adapt 20]
        [--json OUT] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fakes"))

#: Per block kind: a fixed cost (ms) and a cost per MAC (ms): attention costs more per MAC than
#: convolutions, so kinds do not share one slope (the estimator must not get that for free).
KIND_COST: dict[str, tuple[float, float]] = {
    "stem": (0.02, 2.0e-8),
    "ffn": (0.015, 2.0e-8),
    "mhsa": (0.08, 4.0e-8),
    "embed": (0.03, 2.5e-8),
    "attndown": (0.06, 3.5e-8),
    "head": (0.03, 5.0e-8),
    "model": (0.1, 1.5e-8),
}
EMPTY_MS = 0.02  # an empty model: the runtime's per-inference cost ...
EMPTY_MS_PER_ELEMENT = 2e-8  # ... plus copying its input
#: A whole model runs its blocks in context: attention a little slower (cache pressure), the rest a
#: little faster (fusion across block borders); plus a fixed per-inference cost.
IN_CONTEXT = {"mhsa": 1.05, "attndown": 1.05}
IN_CONTEXT_REST = 0.97
MODEL_FIXED_MS = 0.02
WITHIN = 0.03
#: The adapt mode's source device: per kind, its speed against the simulated target (about the
#: issue's measured Xeon-VM / EPYC-VM ratios, inverted), and a cost exponent so that one factor per
#: kind is not exact either.
SOURCE_FACTOR = {"stem": 0.62, "ffn": 0.62, "mhsa": 0.56, "embed": 0.65, "attndown": 0.54, "head": 0.43,
                 "model": 0.60, "empty": 0.68}
SOURCE_EXPONENT = 0.95
#: Rounds per entry at which the best-of-rounds bound is shown: a quiet build's 3, and 2x, 3x, 4x.
BOUND_ROUNDS = (3, 6, 9, 12)


def empty_ms(shape: Sequence[int]) -> float:
    return EMPTY_MS + EMPTY_MS_PER_ELEMENT * math.prod(shape)


def compute_ms(config: Any) -> float:
    """What a block costs beyond an empty model of its input shape."""
    fixed, per_mac = KIND_COST[config.kind]
    return fixed + per_mac * config.macs()


def block_ms(config: Any) -> float:
    if config.kind == "empty":
        return empty_ms(config.input_shape)
    return empty_ms(config.input_shape) + compute_ms(config)


def model_ms(cand: Any) -> float:
    """A whole model: its blocks in context, one input overhead, a fixed cost."""
    blocks = cand.blocks()
    if len(blocks) == 1 and blocks[0].kind == "model":
        return block_ms(blocks[0])
    inside = sum(compute_ms(b) * IN_CONTEXT.get(b.kind, IN_CONTEXT_REST) for b in blocks)
    return inside + empty_ms(cand.input_shape) + MODEL_FIXED_MS


def latency_script(items: Sequence[Any]) -> Callable[[str], float]:
    """key -> true fast latency (ms) for blocks, empties, anchors and whole models."""
    from latbench.blocks.candidates import Candidate

    table = {i.key: model_ms(i) if isinstance(i, Candidate) else block_ms(i) for i in items}

    def true_ms(key: str) -> float:
        if key not in table:
            raise KeyError(f"the latency script has no {key}")
        return table[key]

    return true_ms


def plan(seed: int, samples: int, fixed: bool = False, extra: Sequence[Any] = ()):
    """The default-space build (as `lut build --space`) and the validation models; the latency
    script also knows the `extra` whole models."""
    from latbench.blocks.candidates import resolve_candidate, sample_candidates
    from latbench.blocks.configs import EmptyConfig, overhead_blocks, space_blocks
    from latbench.space import SearchSpace
    from latbench.tables.build import BuildSettings, table_anchors
    from latbench.tables.table import REFERENCE_MODEL

    space = SearchSpace.default()
    # Fixed rules: the consensus rule as given (before rules followed the device's noise).
    settings = BuildSettings(seed=seed, **({"target_precision": None} if fixed else {}))
    configs = space_blocks(space, 224)
    configs += [c for c in resolve_candidate(REFERENCE_MODEL, 224).blocks() if c not in configs]
    calib = sample_candidates(space, 224, settings.calibration_models, settings.seed, purpose="calibration")
    validation = sample_candidates(space, 224, samples, seed)
    from latbench.measuring.journal import Journal

    with Journal(":memory:") as j:
        anchors = table_anchors(j, 224)
    every = (configs + overhead_blocks(configs) + [EmptyConfig.for_shape(224, (1, 3, 224, 224))] + anchors
             + [b for c in validation for b in c.blocks()])
    return space, settings, configs, calib, validation, latency_script(every + list(calib) + list(validation) + list(extra))


def build(profile: str, seed: int, out: Path, samples: int, fixed: bool = False) -> dict[str, Any]:
    from noisy_device import NoisyRunner

    from latbench.tables.build import TableBuilder

    space, settings, configs, calib, validation, true_ms = plan(seed, samples, fixed)
    runner = NoisyRunner(true_ms, profile, seed=seed, epoch=1_700_000_000.0)
    t0 = time.perf_counter()
    res = TableBuilder(runner, out, settings).build(configs, space=space, resolution=224, calibration=calib)
    cpu_s = time.perf_counter() - t0
    from latbench.measuring.journal import Journal

    with Journal(out / "journal.sqlite") as j:
        anchors = len(j.anchors())
    return {"result": res, "runner": runner, "validation": validation, "virtual_s": runner.elapsed,
            "cpu_s": cpu_s, "timings": res.timings, "anchor_readings": anchors}


def source_ms(config: Any) -> float:
    """The scripted source device's latency of a block (or of MobileNetV2 whole)."""
    return SOURCE_FACTOR[config.kind] * block_ms(config) ** SOURCE_EXPONENT


def adapt(profile: str, seed: int, root: Path, samples: int, budget: int) -> dict[str, Any]:
    """An adapt to a fresh device of `profile` from the scripted source table (saved under root)."""
    from noisy_device import NoisyRunner

    from latbench.blocks.configs import ModelConfig
    from latbench.tables.adapt import TableAdapter, plan_adapt
    from latbench.tables.build import BuildSettings
    from latbench.tables.synthetic import synthetic_table
    from latbench.tables.table import REFERENCE_MODEL, LatencyTable

    space, _, _, _, validation, _ = plan(seed, samples)
    source_dir = root / "source"
    if not (source_dir / "blocks.csv").is_file():
        synthetic_table(space, 224, cost=source_ms,
                        reference_ms=source_ms(ModelConfig(224, REFERENCE_MODEL))).save(source_dir)
    out = root / f"{profile}-adapt"
    adapt_plan = plan_adapt([LatencyTable.load(source_dir)], out, budget=budget, seed=seed)
    _, _, _, _, _, true_ms = plan(seed, samples, extra=list(adapt_plan.calibration))
    runner = NoisyRunner(true_ms, profile, seed=seed, epoch=1_700_000_000.0)
    settings = BuildSettings(seed=seed, calibration_models=len(adapt_plan.calibration))
    t0 = time.perf_counter()
    res = TableAdapter(runner, out, settings).adapt(adapt_plan)
    table = res.table
    predicted = table.predicted()
    measured = [k for k in table.blocks["key"] if k not in predicted and not str(k).startswith("empty-")]
    values = dict(zip(table.blocks["key"], table.blocks["latency_ms"].astype(float)))
    errs = sorted(abs(values[k] / runner.true_fast_ms(k) - 1) for k in measured)
    rules = table.meta.get("measuring_rules") or {}
    return {"measured": len(measured), "measured_within_3pct": sum(e <= WITHIN for e in errs) / max(1, len(errs)),
            "measured_max_err_pct": 100 * (errs[-1] if errs else 0.0), "flagged": len(table.flagged()),
            "rounds": rounds_of(table), "max_rounds": (rules.get("consensus") or {}).get("max_rounds"),
            "virtual_s": runner.elapsed, "cpu_s": time.perf_counter() - t0,
            "validation": validation_figures(table, runner, validation)}


def rounds_of(table) -> int:
    """Rounds a table's entries and calibration models took (predicted entries have none)."""
    return int(table.blocks["rounds"].sum()) + int(table.models["rounds"].sum() if len(table.models) else 0)


def entry_figures(table, runner) -> dict[str, Any]:
    blocks = table.blocks
    keys = [k for k in blocks["key"] if not str(k).startswith("empty-")]
    values = dict(zip(blocks["key"], blocks["latency_ms"].astype(float)))
    errs = {k: values[k] / runner.true_fast_ms(k) - 1 for k in keys}
    a = sorted(abs(e) for e in errs.values())
    out: dict[str, Any] = {
        "entries": len(keys),
        "within_3pct_fast": sum(x <= WITHIN for x in a) / len(a),
        "median_err_pct": 100 * statistics.median(a),
        "max_err_pct": 100 * a[-1],
        "worst": sorted(errs.items(), key=lambda kv: -abs(kv[1]))[:3],
        "bias_pct": 100 * statistics.median(errs.values()),
        "flagged": len(table.flagged()),
        "rounds": rounds_of(table),
        "within_3pct_typical": None,
    }
    if "typical_ms" in blocks.columns:
        typical = dict(zip(blocks["key"], blocks["typical_ms"].astype(float)))
        t = [abs(typical[k] / runner.true_typical_ms(k) - 1) for k in keys]
        out["within_3pct_typical"] = sum(x <= WITHIN for x in t) / len(t)
        out["typical_bias_pct"] = 100 * statistics.median(typical[k] / runner.true_typical_ms(k) - 1 for k in keys)
    out["typical_uncertainty_pct"] = 100 * float((table.meta.get("noise_profile") or {}).get("typical_uncertainty")
                                                 or 0.0)
    return out


def validation_figures(table, runner, validation) -> dict[str, Any]:
    from latbench.api import estimate
    from latbench.estimation.validate import accuracy_figures

    ests = [estimate(table, c) for c in validation]
    fast = accuracy_figures([e.latency_ms for e in ests], [runner.true_fast_ms(c.key) for c in validation])
    out = {"fast": fast, "typical": None}
    if all(getattr(e, "typical_ms", None) is not None for e in ests):
        out["typical"] = accuracy_figures([e.typical_ms for e in ests],  # type: ignore[attr-defined]
                                          [runner.true_typical_ms(c.key) for c in validation])
    return out


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def main() -> int:
    from noisy_device import PROFILES, best_of_rounds_within, oracle_typical_errors, typical_factor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default=",".join(PROFILES), help=f"comma-separated, of {', '.join(PROFILES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=30, help="random subnets validated (plus S0-L)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write the figures here")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep the tables under DIR/<profile>")
    ap.add_argument("--adapt", type=int, default=0, metavar="N",
                    help="also adapt each profile's device from a scripted source with budget N (0: no)")
    ap.add_argument("--fixed-rules", action="store_true",
                    help="build with the fixed consensus rule (as before rules followed the device's noise)")
    args = ap.parse_args()
    if args.adapt < 0:
        raise SystemExit(f"--adapt is a budget of measurements (0: no adapt), got {args.adapt}")
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise SystemExit(f"unknown profile(s) {', '.join(unknown)}: one of {', '.join(PROFILES)}")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-noise-"))
    figures: dict[str, dict[str, Any]] = {}
    quiet_s: float | None = None
    if "quiet" not in profiles:
        print("note: the quiet profile is not in --profiles: no build-time ratio")
    for name in sorted(profiles, key=lambda p: p != "quiet"):  # quiet first: the time reference
        out = root / name
        if (out / "journal.sqlite").exists():  # a resumed build would measure nothing: no figures
            raise SystemExit(f"{out} holds a table already; remove it or --keep another directory")
        b = build(name, args.seed, out, args.samples, args.fixed_rules)
        table, runner = b["result"].table, b["runner"]
        f = {"profile": name, **entry_figures(table, runner), "anchor_readings": b["anchor_readings"],
             "virtual_build_s": b["virtual_s"],
             "cpu_s": b["cpu_s"], "export_s": b["timings"].get("export_s"),
             "typical_factor": typical_factor(runner.profile),
             "validation": validation_figures(table, runner, b["validation"]),
             # Any estimator's chance of the typical latency within 3 %, from a build this long.
             "oracle_typical_within_3pct": float(
                 (abs(oracle_typical_errors(runner.profile, b["virtual_s"])) <= WITHIN).mean()),
             # Any rule's best from k rounds per entry: 3 (a quiet build), 6 (2x), 9 (3x), 12.
             "best_of_rounds_within_3pct": best_of_rounds_within(runner.profile, BOUND_ROUNDS)}
        if name == "quiet":
            quiet_s = b["virtual_s"]
        f["time_vs_quiet"] = b["virtual_s"] / quiet_s if quiet_s else None
        # The same at the longest build the goals allow (2x quiet): where it is below 95 %, no
        # build within the time goal can have the typical latency within 3 % in 95 % of builds.
        f["oracle_typical_within_3pct_at_2x"] = None if quiet_s is None else float(
            (abs(oracle_typical_errors(runner.profile, 2 * quiet_s)) <= WITHIN).mean())
        if args.adapt:
            f["adapt"] = adapt(name, args.seed, root, args.samples, args.adapt)
            f["adapt"]["time_vs_full"] = f["adapt"]["virtual_s"] / b["virtual_s"]
        figures[name] = f
        worst = ", ".join(f"{k} {e * 100:+.1f} %" for k, e in f["worst"])
        print(f"{name}: {f['entries']} entries, {f['rounds']} rounds, virtual {f['virtual_build_s']:.0f} s, "
              f"{f['cpu_s']:.0f} s CPU (export {f['export_s']:.0f} s); typical/fast x{f['typical_factor']:.3f}; "
              f"worst {worst}", flush=True)
    print()
    print(f"Default-space table on simulated devices (seed {args.seed}); entries: blocks and MobileNetV2 whole, "
          f"empty models excluded; flagged: all flagged entries, empties included; rounds: of entries and "
          f"calibration models; validation: {args.samples} random subnets + S0-L estimated vs true latency")
    print()
    print("| profile | entries within +-3 % (fast) | (typical) | median / max entry err | entry bias | flagged "
          "| rounds (+ anchor readings) | virtual build | vs quiet | val within 5 % | within 10 % | mean abs err | Kendall tau "
          "| val (typical) within 5 % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        v, t = f["validation"]["fast"], f["validation"]["typical"]
        ratio = "n/a" if f["time_vs_quiet"] is None else f"{f['time_vs_quiet']:.2f}x"
        print(f"| {name} | {f['within_3pct_fast']:.0%} of {f['entries']} | {pct(f['within_3pct_typical'])} "
              f"| {f['median_err_pct']:.1f} % / {f['max_err_pct']:.1f} % | {f['bias_pct']:+.1f} % | {f['flagged']} "
              f"| {f['rounds']} (+{f['anchor_readings']}) | {f['virtual_build_s']:.0f} s | {ratio} | {v['within_5pct']:.0%} "
              f"| {v['within_10pct']:.0%} | {v['mean_abs_pct_error']:.1f} % | {v['kendall_tau']:.3f} "
              f"| {pct(None if t is None else t['within_5pct'])} |")
    if args.adapt:
        print()
        print(f"Adapted tables (budget {args.adapt}, source: the scripted device of SOURCE_FACTOR), each on a fresh "
              "device of the profile; measured entries: blocks and MobileNetV2 whole against their true fast value; "
              "validation against the true fast latency")
        print()
        print("| profile | measured within +-3 % | max err | flagged | rounds (bound) | virtual time | vs full build "
              "| val within 5 % | within 10 % | mean abs err | Kendall tau |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, f in figures.items():
            a, v = f["adapt"], f["adapt"]["validation"]["fast"]
            print(f"| {name} | {a['measured_within_3pct']:.0%} of {a['measured']} | {a['measured_max_err_pct']:.1f} % "
                  f"| {a['flagged']} | {a['rounds']} ({a['max_rounds']}) | {a['virtual_s']:.0f} s "
                  f"| {a['time_vs_full']:.0%} | {v['within_5pct']:.0%} | {v['within_10pct']:.0%} "
                  f"| {v['mean_abs_pct_error']:.1f} % | {v['kendall_tau']:.3f} |")
    print()
    print("The typical latency is the device's long-run average state; a build sees a few minutes of it. "
          "Stated: the build's own 95 % uncertainty of it (noise profile, batch means over time); oracle: "
          "the share of builds this long (and of builds 2x the quiet one, the longest the time goal allows) "
          "in which even an estimator seeing the device's state at every moment gets it within 3 % (its "
          "exact average over the window, 200 windows of the profile's process).")
    print()
    print("Best of k rounds: the share of entries whose fastest of k rounds (taken at random moments) lies "
          "within 3 % of the true fast state, the most any rule reading its value from rounds can reach; a "
          "quiet build gives an entry 3 rounds, a build of 2x about 6.")
    print()
    print("| profile | typical bias | stated 95 % uncertainty | truth inside it | oracle within 3 % | at 2x quiet "
          + "".join(f"| best of {k} rounds " for k in BOUND_ROUNDS) + "|")
    print("|---|---|---|---|---|---|" + "---|" * len(BOUND_ROUNDS))
    for name, f in figures.items():
        bias, stated = f.get("typical_bias_pct"), f["typical_uncertainty_pct"]
        inside = "n/a" if bias is None or not stated else ("yes" if abs(bias) <= stated else "no")
        print(f"| {name} | {'n/a' if bias is None else f'{bias:+.1f} %'} | +-{stated:.1f} % | {inside} "
              f"| {f['oracle_typical_within_3pct']:.0%} | {pct(f['oracle_typical_within_3pct_at_2x'])} "
              + "".join(f"| {f['best_of_rounds_within_3pct'][k]:.0%} " for k in BOUND_ROUNDS) + "|")
    if args.json:
        clean = {n: {k: v for k, v in f.items() if k != "worst"} | {"worst": [[k, e] for k, e in f["worst"]]}
                 for n, f in figures.items()}
        Path(args.json).write_text(json.dumps({"seed": args.seed, "profiles": clean}, indent=2))
    print(json.dumps({"tables": str(root)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
