"""`latbench agent`: serve this host's devices to a device farm (a Ray cluster).

The agent joins the cluster as a Ray node of its own (`ray start --address HEAD --num-cpus 0
--resources ... --block`, a child process), advertising for every attached device one unit of
`latbench-device:<kind>:<model>` and one of `latbench-serial:<device>@<host>`; then it starts one
named, detached device actor per device on that node (latbench.measuring.farm.cluster.serve_devices)
and waits. Stopping the agent (Ctrl-C, SIGTERM) stops its node and with it its actors: a build
using them loses only their in-flight measurements, which go to other devices. The work is
`latbench.api.serve_agent`; this command parses and prints.
"""

from __future__ import annotations

import argparse

from latbench.commands._farm import add_cluster_flag
from latbench.commands._output import console
from latbench.commands._runner import add_runner_flags, device_options, runner_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="serve this host's devices to a device farm (a Ray cluster)")
    add_cluster_flag(p, "serve this host's devices")
    p.add_argument("--device", action="append", default=None, metavar="ID",
                   help="serve this device (repeatable; default: every available device of this host)")
    p.add_argument("--host", default=None, help="this host's name in farm device ids (default: the hostname)")
    add_runner_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latbench import api

    return api.serve_agent(args.cluster, args.device, host=args.host, options_for=lambda d: device_options(d, args),
                           say=lambda line: console().print(line, highlight=False), **runner_options(args))
