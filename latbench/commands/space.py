"""`latbench space show|sample|blocks`."""

from __future__ import annotations

import argparse
from collections import Counter

from latbench.blocks.configs import space_blocks
from latbench.commands._output import add_json_flag, print_json, print_table
from latbench.commands._types import positive_int
from latbench.core.errors import UsageError
from latbench.space import SearchSpace


def register(sub: argparse._SubParsersAction) -> None:
    space = sub.add_parser("space", help="inspect the search space")
    ssub = space.add_subparsers(dest="space_command", metavar="SUBCOMMAND", parser_class=type(space))
    ssub.required = True
    for name, func, helptext in (
        ("show", run_show, "the space's dimensions"),
        ("sample", run_sample, "random subnets (arch dicts)"),
        ("blocks", run_blocks, "every unique block configuration"),
    ):
        p = ssub.add_parser(name, help=helptext)
        add_space_flag(p)
        if name == "sample":
            p.add_argument("--samples", dest="n", type=int, default=1, metavar="N", help="how many subnets (default 1)")
            p.add_argument("--n", dest="n", type=int, default=1, help=argparse.SUPPRESS)  # the old name
            p.add_argument("--seed", type=int, default=0)
        if name in ("sample", "blocks"):
            p.add_argument("--resolution", type=positive_int, default=None, help="one of the space's resolutions")
        add_json_flag(p)
        p.set_defaults(func=func)


def add_space_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default=None, metavar="FILE", help="search-space YAML (default: the shipped one)")


def run_show(args: argparse.Namespace) -> int:
    space = SearchSpace.load(args.space)
    d = space.to_dict()
    d["digest"] = space.digest()
    d["unique_blocks"] = {str(r): len(space_blocks(space, r)) for r in space.resolutions}
    if args.json:
        print_json(d)
        return 0
    rows = [
        (i + 1, " ".join(map(str, s.widths)), f"{s.depth_min}-{s.depth_max}", " ".join(map(str, s.expansions)),
         "0-depth" if s.attention else "none")
        for i, s in enumerate(space.stages)
    ]
    print_table(f"space {space.name} (resolutions {', '.join(map(str, space.resolutions))})",
                ["stage", "widths", "depth", "expansions", "attention"], rows)
    print(f"unique block configurations: {d['unique_blocks']}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    space = SearchSpace.load(args.space)
    if args.n < 1:
        raise UsageError(f"--samples must be >= 1, got {args.n}")
    if args.resolution is not None:
        space.check_resolution(args.resolution)
    archs = space.sample_many(args.n, args.seed, args.resolution)
    if args.json:
        print_json([a.to_dict() for a in archs])
        return 0
    print_table(f"{args.n} random subnets (seed {args.seed})", ["#", "arch"],
                [(i, a.compact()) for i, a in enumerate(archs)])
    return 0


def run_blocks(args: argparse.Namespace) -> int:
    space = SearchSpace.load(args.space)
    blocks = space_blocks(space, args.resolution)
    rows = [{"key": b.key, "kind": b.kind, "input_shape": list(b.input_shape), "params": b.params(),
             "fields": b.fields()} for b in blocks]
    if args.json:
        print_json(rows)
        return 0
    print_table(f"{len(rows)} unique block configurations of space {space.name}",
                ["key", "kind", "input shape", "params"],
                [(r["key"], r["kind"], "x".join(map(str, r["input_shape"])), r["params"]) for r in rows])
    counts = Counter(r["kind"] for r in rows)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0
