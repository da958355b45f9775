"""`latbench devices`: every device latbench can measure on, with provenance or why it is unavailable."""

from __future__ import annotations

import argparse
from typing import Any

from latbench.commands._farm import add_cluster_flag
from latbench.commands._output import add_json_flag, console, print_json, print_table
from latbench.commands._runner import add_runner_flags, device_options

# Provenance keys worth a glance in the table, in order.
_SUMMARY_KEYS = ("device_model", "device_name", "soc", "os")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list devices (cpu, Android, iPhone, Mac, Qualcomm AI Hub) and whether "
                       "they are usable")
    add_cluster_flag(p, "list the devices")
    p.add_argument("--probe", default=None, metavar="ID",
                   help="measure the noise profile of device ID alone (anchor rounds) and the rules a build "
                        "would derive from it")
    p.add_argument("--rounds", type=int, default=3, help="with --probe: rounds per anchor block (default 3)")
    add_runner_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def _details(provenance: dict[str, Any]) -> str:
    parts = [str(provenance[k]) for k in _SUMMARY_KEYS if provenance.get(k)]
    runtime = " ".join(str(provenance[k]) for k in ("runtime", "runtime_version") if provenance.get(k))
    return ", ".join(dict.fromkeys([*parts, runtime] if runtime else parts))


def run(args: argparse.Namespace) -> int:
    if args.probe is not None:
        return run_probe(args)
    if args.cluster is not None:
        return run_cluster(args)
    from latbench import api

    infos = api.list_devices()
    if args.json:
        print_json([i.to_dict() for i in infos])
        return 0
    rows = [
        (i.id, i.kind, "yes" if i.available else "no", _details(i.provenance) if i.available else i.reason)
        for i in infos
    ]
    print_table("devices", ["id", "kind", "available", "details / reason"], rows)
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    """Every device the agents of a cluster serve: farm id, host, state, provenance."""
    from latbench import api
    from latbench.commands._farm import require_farm

    require_farm(args)
    devices = api.farm_devices(args.cluster)
    if args.json:
        print_json(devices)
        return 0
    rows = [(d["id"], d.get("host") or "", d["state"] + (f" ({d['reason']})" if d.get("reason") else ""),
             str(d.get("measured", "")), _details(d.get("provenance") or {})) for d in devices]
    print_table("devices of the farm", ["id", "host", "state", "measured", "details"], rows)
    return 0


def run_probe(args: argparse.Namespace) -> int:
    """The noise profile of one device and the rules a build would derive from it."""
    from latbench import api
    from latbench.core.errors import UsageError
    from latbench.measuring.noise import NoiseProfile

    if not args.probe:
        raise UsageError("--probe needs a device id, e.g. --probe cpu (see `latbench devices`)")
    if args.rounds < 2:
        raise UsageError(f"--rounds must be >= 2 for a probe, got {args.rounds}")
    out = api.probe_device(args.probe, rounds=args.rounds, progress=not args.json, **device_options(args.probe, args))
    if args.json:
        print_json(out)
        return 0
    rules = out["rules"]
    console().print(f"[bold]{out['device_id']}[/]: {out['readings']} anchor rounds in {out['seconds']:.1f} s",
                    highlight=False)
    if out["profile"]:
        console().print(NoiseProfile.from_dict(out["profile"]).summary(), highlight=False)
    console().print(f"rules: {rules['why']}; tolerance {rules['achievable']:.1%}, up to "
                    f"{rules['consensus']['max_rounds']} rounds, extra rounds >= {rules['min_separation_s']:.0f} s apart",
                    highlight=False)
    return 0
