"""`latbench demo`: the main job on the emulated CPU backend, end to end.

Builds (or resumes) the CPU latency table of the default space, validates it against end-to-end
measurements of a few random subnets and S0, and prints the summary. What `make demo` runs.
"""

from __future__ import annotations

import argparse

from latbench.commands._output import console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build and validate the CPU table of the default space (what `make demo` runs)")
    p.add_argument("--out", default=None, help="table directory (default tables/cpu/efficientformerv2-r224)")
    p.add_argument("--samples", type=int, default=6, help="random subnets to validate on (default 6)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cli
    from latbench.space import SearchSpace
    from latbench.tables import default_table_dir

    space = SearchSpace.default()
    table = args.out or str(default_table_dir("cpu", space.name, space.resolutions[0]))
    parser = cli.build_parser()
    console().print(f"[bold]1/2[/] latency table of the default space on the emulated CPU backend -> {table}")
    build = parser.parse_args(["lut", "build", "--device", "cpu", "--space", "--out", table])
    code = build.func(build)
    if code:
        return code
    console().print(f"[bold]2/2[/] validating {table} on {args.samples} random subnets and S0-L, end to end")
    validate = parser.parse_args(["lut", "validate", table, "--samples", str(args.samples), "--seed", "1"])
    code = validate.func(validate)
    console().print(f"next: `latbench lut estimate {table} efficientformerv2_s1`, "
                    f"`latbench profile efficientformerv2_s0 --device cpu`")
    return code
