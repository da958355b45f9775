"""How fast can latbench score subnets? FastEstimator vs the usual per-arch dict-sum, same run.

    .venv/bin/python benchmarks/bench_estimator.py [--lut TABLE] [--n 100000] [--baseline-n 5000]

Scores N random subnets (latency with the table's overhead model, parameters, MES) with the vectorised
FastEstimator, pinned to one core, and compares with a per-arch Python loop that builds each block's
key and sums dict entries (the usual lookup-table code), measured in the same run on a subset.
Both are checked against each other and against LatencyEstimator. Without --lut a synthetic table of
the default space is used (the timing does not depend on the latency values).
Goal: 100,000 subnets in <= 1 s on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from latbench.blocks.candidates import Candidate  # noqa: E402
from latbench.blocks.configs import EmptyConfig, arch_slots  # noqa: E402
from latbench.efficiency.score import MES, MESConfig, config_with_overrides, resolve  # noqa: E402
from latbench.estimation.estimator import LatencyEstimator  # noqa: E402
from latbench.estimation.fast import FastEstimator
from latbench.space import NAMED_ARCHS, Arch, named_arch  # noqa: E402
from latbench.tables.synthetic import synthetic_table  # noqa: E402
from latbench.tables.table import LatencyTable  # noqa: E402


def pin_one_core() -> str:
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    except (AttributeError, OSError):
        return "not pinned (no sched_setaffinity)"


class DictSum:
    """The usual lookup-table code: per arch, build every block's key and add up dict entries."""

    def __init__(self, table: LatencyTable, mes: MES):
        est = LatencyEstimator(table)
        ms = est.ms
        self.net: dict[str, float] = {}
        self.params: dict[str, int] = {}
        # Per-key net latency (t - empty of its input shape) and params, prepared once like any LUT.
        space_archs = [named_arch(n) for n in NAMED_ARCHS]
        from latbench.blocks.configs import space_blocks

        configs = space_blocks(table.space(fallback=True), int(table.meta.get("resolution") or 224))
        for c in configs + [s.config for a in space_archs for s in arch_slots(a)]:
            e = ms.get(EmptyConfig.for_shape(c.resolution, c.input_shape).key, 0.0) if est.use_overhead else 0.0
            if c.key in ms:
                self.net[c.key] = est.model.net_ms(c, ms[c.key], e)  # the calibration folded in
                self.params[c.key] = c.params()
        r = int(table.meta.get("resolution") or 224)
        self.e_in = est.model.scales["rest"] * (ms.get(EmptyConfig(r, 3, r, r).key, 0.0) if est.use_overhead else 0.0)
        self.mes = mes

    def score(self, arch: Arch) -> tuple[float, int, float]:
        r = arch.resolution
        w = arch.widths
        keys = [f"stem-r{r}-c{w[0]}"]
        for i, st in enumerate(arch.stages):
            s = i + 1
            first_attn = st.depth - st.attention
            for j, e in enumerate(st.expansions):
                if j >= first_attn:
                    keys.append(f"mhsa-r{r}-s{s}-c{st.width}")
                keys.append(f"ffn-r{r}-s{s}-c{st.width}-e{e}")
            if s < 3:
                keys.append(f"embed-r{r}-s{s}-c{st.width}-o{w[i + 1]}")
            elif s == 3:
                keys.append(f"attndown-r{r}-s3-c{st.width}-o{w[3]}")
        keys.append(f"head-r{r}-c{w[3]}")
        lat = self.e_in
        params = 0
        for k in keys:
            lat += self.net[k]
            params += self.params[k]
        return lat, params, self.mes({"latency": lat, "params": params})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lut", default=None, help="latency table (default: synthetic table of the default space)")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--baseline-n", type=int, default=5_000, help="subnets for the dict-sum baseline")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    pinned = pin_one_core()
    table = LatencyTable.load(args.lut) if args.lut else synthetic_table()
    config = MESConfig() if table.has("model-mobilenetv2_100-r224") else config_with_overrides(
        MESConfig(), latency_unit="1ms")
    mes = resolve(config, table)

    t0 = time.perf_counter()
    fast = FastEstimator(table)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc = fast.sample(args.n, args.seed)
    sample_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scores = fast.score(enc, mes)
        times.append(time.perf_counter() - t0)
    best, median = min(times), statistics.median(times)

    # Encoding Arch objects (the path for archs that come from files or from Python code).
    n_enc = min(args.n, 20_000)
    archs_for_enc = [fast.decode(enc, i) for i in range(n_enc)]
    t0 = time.perf_counter()
    fast.encode(archs_for_enc)
    encode_per = (time.perf_counter() - t0) / n_enc

    # Baseline on a subset, same subnets.
    nb = min(args.baseline_n, args.n)
    archs = archs_for_enc[:nb] if nb <= n_enc else [fast.decode(enc, i) for i in range(nb)]
    base = DictSum(table, mes)
    t0 = time.perf_counter()
    ref = [base.score(a) for a in archs]
    base_s = time.perf_counter() - t0
    base_rate = nb / base_s
    fast_rate = args.n / median

    lat_b = np.array([x[0] for x in ref])
    par_b = np.array([x[1] for x in ref])
    mes_b = np.array([x[2] for x in ref])
    diff_base = float(np.max(np.abs(scores.latency_ms[:nb] - lat_b) / lat_b))
    diff_mes = float(np.max(np.abs(scores.mes[:nb] - mes_b) / mes_b))
    params_equal = bool(np.array_equal(scores.params[:nb], par_b))
    # LatencyEstimator on some random subnets and the published variants.
    check = archs[:200] + [named_arch(n) for n in NAMED_ARCHS if fast.space.contains(named_arch(n))]
    est = LatencyEstimator(table)
    t0 = time.perf_counter()
    lat_e = np.array([est.estimate(Candidate(a.label(), a.resolution, arch=a)).latency_ms for a in check])
    est_rate = len(check) / (time.perf_counter() - t0)
    lat_f = fast.score_archs(check).latency_ms
    diff_est = float(np.max(np.abs(lat_f - lat_e) / lat_e))

    out = {
        "table": table.label(), "space": fast.space.name, "cpu": pinned, "n": args.n,
        "fast_build_s": build_s, "fast_sample_s": sample_s, "fast_score_best_s": best, "fast_score_median_s": median,
        "fast_candidates_per_s": fast_rate, "encode_us_per_arch": encode_per * 1e6,
        "baseline_n": nb, "baseline_s": base_s, "baseline_candidates_per_s": base_rate,
        "speedup": fast_rate / base_rate, "max_rel_diff_vs_dict_sum": diff_base, "max_rel_diff_mes": diff_mes,
        "latency_estimator_candidates_per_s": est_rate, "params_equal": params_equal, "max_rel_diff_vs_LatencyEstimator": diff_est, "goal_met": median <= 1.0,
        "mes": mes.describe(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"table {out['table']} (space {out['space']}), {pinned}; {mes.describe()}")
    print(f"FastEstimator: built in {build_s:.2f} s; sampled {args.n:,} subnets as arrays in {sample_s:.3f} s")
    print(f"  scored {args.n:,} subnets (latency, params, MES): median {median:.3f} s, best {best:.3f} s "
          f"of {args.repeats} -> {fast_rate:,.0f} candidates/s   [goal <= 1 s: {'met' if out['goal_met'] else 'NOT met'}]")
    print(f"  encoding Arch objects: {encode_per * 1e6:.1f} us per arch (+{encode_per * args.n:.2f} s for {args.n:,})")
    print(f"per-arch dict-sum baseline: {nb:,} subnets in {base_s:.3f} s -> {base_rate:,.0f} candidates/s")
    print(f"LatencyEstimator.estimate per arch (latency only, for reference): {est_rate:,.0f} candidates/s")
    print(f"speed-up: {fast_rate / base_rate:,.0f}x (scoring pre-encoded subnets); "
          f"{(1 / base_rate) / (encode_per + 1 / fast_rate):,.1f}x including encoding from Arch objects")
    print(f"agreement: max rel. latency diff vs dict-sum {diff_base:.1e}, MES {diff_mes:.1e}, params equal: "
          f"{params_equal}; vs LatencyEstimator ({len(check)} subnets incl. S0-L) {diff_est:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
