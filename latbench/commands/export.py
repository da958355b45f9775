"""`latbench export`: every unique block of a space, or one whole model, to ONNX, Core ML and/or TFLite."""

from __future__ import annotations

import argparse

from latbench.commands._output import (
    add_json_flag,
    add_progress_flag,
    print_json,
    print_table,
    shows_progress,
)
from latbench.commands._types import positive_int

# `--space` without a value means the shipped space.
_DEFAULT_SPACE = ""
# More artifacts than this are summarised per block kind instead of one row each.
MAX_ROWS = 24


def register(sub: argparse._SubParsersAction) -> None:
    from latbench.export.common import DEFAULT_DEPLOYMENT_TARGET, PRECISIONS

    p = sub.add_parser(
        "export",
        help="export blocks of a space or a whole model to ONNX / Core ML / TFLite (cached, validated)",
        description=(
            "With --space, every unique block configuration of the space; with --model or --arch, the "
            "whole model (checked against the space when --space is also given). Artifacts are "
            "content-addressed: unchanged ones are found in DIR/manifest.json and not exported again."
        ),
    )
    p.add_argument("--space", nargs="?", const=_DEFAULT_SPACE, default=None, metavar="FILE",
                   help="search-space YAML (no value: the shipped space)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--model", default=None, metavar="NAME", help="a registered model (see `latbench models`)")
    target.add_argument("--arch", default=None, metavar="FILE", help="an EfficientFormerV2 arch YAML/JSON file")
    p.add_argument("--format", default="onnx,coreml", metavar="FMT[,FMT]",
                   help="comma-separated formats: onnx, coreml, tflite (default: onnx,coreml)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: $LATBENCH_CACHE or ~/.cache/latbench/exports)")
    p.add_argument("--resolution", type=positive_int, default=None, metavar="R",
                   help="input resolution (space: one it lists, default all; model: default its own)")
    p.add_argument("--precision", "--dtype", dest="precision", choices=PRECISIONS, default=None,
                   help="for every format (default: fp32 for ONNX and TFLite, fp16 for Core ML; TFLite has no fp16; "
                        "int8: onnxruntime's static QDQ quantization for ONNX, ai-edge-quantizer's full-integer one "
                        "for TFLite, W8A8 by coremltools' PyTorch quantizer for Core ML, at iOS17 or later)")
    p.add_argument("--calibration-seed", type=int, default=None, metavar="N",
                   help="int8: seed of the calibration batches (default 0); part of the artifact's hash")
    p.add_argument("--calibration-batches", type=positive_int, default=None, metavar="N",
                   help="int8: standard-normal calibration batches (default 8); part of the artifact's hash")
    p.add_argument("--deployment-target", default=DEFAULT_DEPLOYMENT_TARGET, metavar="TARGET",
                   help=f"Core ML minimum deployment target (default {DEFAULT_DEPLOYMENT_TARGET})")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes (default: min(2, CPUs))")
    p.add_argument("--force", action="store_true", help="re-export even what the cache already holds")
    add_json_flag(p)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latbench import api

    recipe = {k: v for k, v in (("calibration_seed", args.calibration_seed),
                                ("calibration_batches", args.calibration_batches)) if v is not None}
    if recipe and args.precision != "int8":
        from latbench.core.errors import UsageError

        raise UsageError("--calibration-seed and --calibration-batches apply to --precision int8")
    report = api.export_artifacts(space=args.space, model=args.model, arch=args.arch, formats=args.format, out=args.out,
                        resolution=args.resolution, precision=args.precision,
                        deployment_target=args.deployment_target, jobs=args.jobs, force=args.force,
                        progress=shows_progress(args), quantization=recipe or None)
    if args.json:
        print_json(report.to_json())
        return 1 if report.failures else 0

    shown = [r for r in report if r.status != "cached"]
    if 0 < len(shown) <= MAX_ROWS:
        print_table(
            f"{len(shown)} artifacts exported to {report.out_dir}",
            ["key", "format", "prec", "status", "size", "s", "check"],
            [(f"{r.key} ({r.name})" if r.name else r.key, r.format, r.precision, r.status, _size(r.size),
              round(r.export_seconds, 1), _check(r))
             for r in shown],
        )
    elif shown:
        print_table(f"{len(shown)} artifacts exported to {report.out_dir} (by block kind)",
                    ["kind", "format", "prec", "status", "n", "size", "s/artifact", "check"],
                    _grouped(shown))
    n_exp, n_cached, n_failed = len(report.exported), len(report.cached), len(report.failures)
    print(
        f"{len(report)} artifacts: {n_exp} exported, {n_cached} cached, {n_failed} failed "
        f"in {report.wall_seconds:.1f} s; manifest {report.manifest_path}"
    )
    if any(r.format == "coreml" and r.validation.get("parity", {}).get("status") == "skipped" for r in report):
        reason = next(r.validation["parity"]["reason"] for r in report
                      if r.format == "coreml" and r.validation.get("parity", {}).get("status") == "skipped")
        print(f"Core ML parity not checked: {reason} (packages were reloaded and their ops recorded)")
    if report.failures:
        print(f"{n_failed} failed:")
        for r in report.failures:
            print(f"  {r.key} [{r.format}]: {r.error}")
        return 1
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _grouped(records: list) -> list[tuple]:
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r.kind, r.format, r.precision, r.status), []).append(r)
    rows = []
    for (kind, fmt, prec, status), rs in groups.items():
        diffs = [r.validation["parity"]["max_abs_diff"] for r in rs
                 if "max_abs_diff" in (r.validation.get("parity") or {})]
        if diffs:
            check = f"max diff {max(diffs):.0e}"
            if fmt == "tflite":
                full = sum(bool((r.validation.get("xnnpack") or {}).get("fully_delegated")) for r in rs)
                check += f", {full}/{len(rs)} fully on XNNPACK"
        elif cosines := [r.validation["parity"]["cosine"] for r in rs if "cosine" in (r.validation.get("parity") or {})]:
            check = f"int8, min cosine {min(cosines):.4f}"
        elif fmt == "coreml" and status != "failed":
            check = "reloaded"
        else:
            check = ""
        size = sum(r.size or 0 for r in rs)
        rows.append((kind, fmt, prec, status, len(rs), _size(size) if size else "",
                     sum(r.export_seconds for r in rs) / len(rs), check))
    return rows


def _check(r) -> str:
    parity = r.validation.get("parity") or {}
    if parity.get("status") in ("passed", "failed") and "cosine" in parity:
        return f"int8 parity {parity['status']} (cosine {parity['cosine']:.4f}, rel. error {parity['rel_error']:.3f})"
    if parity.get("status") in ("passed", "failed") and "max_abs_diff" in parity:
        return f"parity {parity['status']} ({parity['max_abs_diff']:.0e}){_delegation(r)}"
    if r.format == "coreml" and r.validation.get("reload") == "passed":
        return f"reloaded, {sum(r.validation.get('mil_ops', {}).values())} ops"
    return "failed" if r.error else ""


def _delegation(r) -> str:
    """How a TFLite graph went to XNNPACK (empty for other formats)."""
    x = r.validation.get("xnnpack") if r.format == "tflite" else None
    if not x or "partitions" not in x:
        return ""
    if x.get("fully_delegated"):
        return ", fully on XNNPACK"
    left = ", ".join(f"{op} x{n}" for op, n in (x.get("undelegated_ops") or {}).items())
    return f", XNNPACK {x['partitions']} partition(s)" + (f", not delegated: {left}" if left else "")
