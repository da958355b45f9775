"""`latbench demo`: the main job on the emulated CPU backend, end to end.

Builds (or resumes) the CPU latency table of the default space, validates it against end-to-end
measurements of a few random subnets and S0-L, and prints the summary. What `make demo` runs.
"""

from __future__ import annotations

import argparse

from latbench.commands._output import add_progress_flag, console, shows_progress
from latbench.core.errors import UsageError
from latbench.core.progress import phase_progress

#: Per validation pass: three rounds of every model always, then no new round after this.
VALIDATION_BUDGET = "40s"
#: Whole models of 10-70 ms: 1.5 s a round gives 20-150 runs, enough for their p2, and keeps the
#: demo within a few minutes (a full build or `lut validate` samples up to 4 s). On this VM on a noisy
#: day the build's 24 calibration rounds sampled 3.0 s each at the 4 s cap, 72 of its 267 s.
MODEL_TIME_CAP_S = 1.5
#: Rounds sample at least this long (a full build: 0.3 s): 60-2000 runs of the default space's
#: blocks; the demo's time goes to rounds at different moments rather than to longer ones.
MIN_ROUND_S = 0.2
#: Validation rounds of whole models (10-70 ms): 15-100 runs each, 3 rounds a pass, 2 passes.
VALIDATION_TIME_CAP_S = 1.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build and validate the CPU table of the default space (what `make demo` runs)")
    p.add_argument("--out", default=None, help="table directory (default tables/cpu/efficientformerv2-r224)")
    p.add_argument("--samples", type=int, default=6, help="random subnets to validate on (default 6)")
    p.add_argument("--budget", default="2m",
                   help="measuring time after which the build starts no new wave and says what it reached "
                        "(default 2m: the demo stays within minutes on a noisy host; run it again to go on, "
                        "or `none` for no limit)")
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latbench import api
    from latbench.commands.lut import print_validation, report_builds
    from latbench.space import SearchSpace

    if args.samples < 0:
        raise UsageError(f"--samples must be >= 0, got {args.samples}")
    [plan] = api.plan_builds("cpu", space=True, resolutions=[SearchSpace.default().resolutions[0]], out=args.out)
    console().print(f"[bold]1/2[/] latency table of the default space on the emulated CPU backend -> {plan.out}")
    with api.open_device("cpu") as runner:
        with phase_progress(shows_progress(args)) as progress:
            budget = None if str(args.budget).strip().lower() == "none" else args.budget
            settings = api.build_settings(jobs=2, budget=budget, model_time_cap=MODEL_TIME_CAP_S,
                                          min_time=MIN_ROUND_S)
            [res] = api.build_planned(runner, [plan], settings, progress=progress)
        report_builds([res], as_json=False)
        console().print(f"[bold]2/2[/] validating {plan.out} on {args.samples} random subnets and S0-L, end to end")
        with phase_progress(shows_progress(args)) as progress:
            result = api.validate_table(res.table, samples=args.samples, seed=1, jobs=2, progress=progress,
                                        runner=runner, time_cap_s=VALIDATION_TIME_CAP_S,
                                        budget=VALIDATION_BUDGET)
    print_validation(result)
    console().print(f"next: `latbench lut estimate {plan.out} efficientformerv2_s1`, "
                    f"`latbench profile efficientformerv2_s0 --device cpu`", highlight=False)
    return 0
