"""`latbench models` and `latbench model info`."""

from __future__ import annotations

import argparse

from latbench.blocks.candidates import resolve_candidate
from latbench.commands._output import add_json_flag, print_json, print_table
from latbench.commands._types import positive_int
from latbench.models import default_resolution, list_models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models")
    add_json_flag(p)
    p.set_defaults(func=run_models)

    model = sub.add_parser("model", help="inspect (and build) models")
    msub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", parser_class=type(model))
    msub.required = True
    info = msub.add_parser("info", help="parameters, MACs, input shape and blocks of a model or arch file")
    info.add_argument("target", metavar="NAME|ARCH_FILE",
                      help="a registered model (e.g. efficientformerv2_s0, mobilevit_xs) or an arch .yaml/.json file")
    info.add_argument("--resolution", type=positive_int, default=None, help="input resolution (default: the model's own)")
    info.add_argument("--checkpoint", default=None, help="official checkpoint (.pth) to load with strict key checks")
    add_json_flag(info)
    info.set_defaults(func=run_info)

    from latbench.commands.model_build import register_build

    register_build(msub)


def run_models(args: argparse.Namespace) -> int:
    rows = [{"name": n, "default_resolution": default_resolution(n)} for n in list_models()]
    if args.json:
        print_json(rows)
    else:
        print_table("models", ["name", "default resolution"], [(r["name"], r["default_resolution"]) for r in rows])
    return 0


def model_info(target: str, resolution: int | None = None, checkpoint: str | None = None) -> dict:
    cand = resolve_candidate(target, resolution)
    model = cand.build()
    if checkpoint:
        from latbench.models.efficientformerv2 import load_checkpoint

        load_checkpoint(model, checkpoint)
    params = sum(p.numel() for p in model.parameters())
    blocks = cand.blocks()
    info = {
        "name": cand.name,
        "source": cand.source,
        "params": params,
        "macs": cand.macs(),
        "input_shape": list(cand.input_shape),
        "resolution": cand.resolution,
        "checkpoint": checkpoint,
        "n_blocks": len(blocks),
        "blocks": [b.key for b in blocks],
    }
    if cand.arch is not None:
        info["arch"] = cand.arch.to_dict()
    return info


def run_info(args: argparse.Namespace) -> int:
    info = model_info(args.target, args.resolution, args.checkpoint)
    if args.json:
        print_json(info)
        return 0
    rows = [
        ("name", info["name"]),
        ("params", info["params"]),
        ("MACs", f"{info['macs'] / 1e9:.3f} G"),
        ("input shape", "x".join(map(str, info["input_shape"]))),
        ("blocks", info["n_blocks"]),
    ]
    if "arch" in info:
        arch = info["arch"]["stages"]
        rows.append(("widths", " ".join(str(s["width"]) for s in arch)))
        rows.append(("depths", " ".join(str(len(s["expansions"])) for s in arch)))
        rows.append(("attention", " ".join(str(s["attention"]) for s in arch)))
    if info["checkpoint"]:
        rows.append(("checkpoint", f"{info['checkpoint']} (loaded, strict)"))
    print_table(None, ["", info["name"]], rows)
    return 0
