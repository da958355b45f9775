"""Helpers shared by test modules (import as `from _support import ...`; conftest modules clash by name)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def latbench_subprocess(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """The real console entry point in a child process (checks exit codes and that no traceback leaks)."""
    return subprocess.run(
        [sys.executable, "-m", "latbench", *args],
        cwd=kw.pop("cwd", REPO), capture_output=True, text=True, timeout=timeout, **kw,
    )


def one_block_per_kind() -> dict:
    """One small configuration of every block kind of the default space (the int8 tests' set)."""
    from latbench.blocks.configs import (
        AttnConfig,
        AttnDownConfig,
        EmbedConfig,
        EmptyConfig,
        FFNConfig,
        HeadConfig,
        StemConfig,
    )

    return {
        "stem": StemConfig(224, 32),
        "ffn": FFNConfig(224, 4, 176, 2),
        "mhsa": AttnConfig(224, 4, 176),
        "embed": EmbedConfig(224, 2, 48, 96),
        "attndown": AttnDownConfig(224, 96, 176),
        "head": HeadConfig(224, 176),
        "empty": EmptyConfig(224, 32, 56, 56),
    }


#: BuildSettings of a tiny table build on a real runner: one round of 5 runs, no calibration, no waits.
TINY_BUILD = dict(rounds=1, runs=5, warmup=2, jobs=1, calibration_models=0, target_precision=None,
                  probe_rounds=1, profile=False, cool_down=False, min_separation_s=0.0)


def assert_int8_block_record(rec, key: str, limits: dict) -> None:
    """An exported int8 block: exported, within the parity `limits` ({"min_cosine", "max_rel_error"})
    yet not bit-identical with fp32 (really quantized), and named as an int8 artifact."""
    assert rec.ok and rec.precision == "int8", rec.error
    parity = rec.validation["parity"]
    assert parity["status"] == "passed"
    assert parity["cosine"] >= limits["min_cosine"] and parity["rel_error"] <= limits["max_rel_error"]
    assert parity["cosine"] < 1.0
    assert Path(rec.path).name.startswith(f"{key}-int8-")


def manifest_recipes(report, fmt: str) -> list[dict]:
    """The quantization recipes the manifest of an export `report` records for its int8 `fmt` artifacts."""
    import json

    manifest = json.loads(report.manifest_path.read_text())
    return [e["quantization"] for e in manifest["artifacts"] if e["precision"] == "int8" and e["format"] == fmt]


def export_every_kind(fmt: str, out):
    """One block of every kind exported to int8 `fmt` into `out` (the int8 tests' module fixtures)."""
    from latbench.export import export_items

    return export_items(list(one_block_per_kind().values()), fmt, out, precision="int8", jobs=1)
