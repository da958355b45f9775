"""latbench's public Python API: the three jobs (profile, build/validate/check a table, compare by
MES) from a notebook or a search loop, with the same code paths as the command line.

    import latbench
    table = latbench.load_table("tables/cpu/efficientformerv2-r224")
    latbench.estimate(table, "efficientformerv2_s0").latency_ms
    latbench.estimate_many(table, ["efficientformerv2_s0", my_arch, {"stages": [...]}])  # a DataFrame
    latbench.mes(table, my_arch)

Targets (what gets estimated, profiled or scored) can be a registered model name, an `Arch`, an
arch mapping (as in an arch file) or the path of an arch file. Errors are latbench's own
(`latbench.UsageError`, `latbench.DeviceError`, ...), each a one-line message saying what to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from latbench.blocks.candidates import Candidate, to_candidate
from latbench.core.errors import UsageError
from latbench.core.progress import ProgressFn, phase_progress
from latbench.estimation.estimator import Estimate, LatencyEstimator
from latbench.estimation.fast import FastEstimator
from latbench.estimation.validate import ValidationResult
from latbench.measuring.profile import ProfileResult
from latbench.space import Arch, SearchSpace
from latbench.tables.check import CheckResult
from latbench.tables.table import LatencyTable, find_table

Target = str | Path | Arch | dict | Candidate

__all__ = ["FastEstimator", "build_table", "check_table", "estimate", "estimate_many", "load_table", "mes",
           "open_device", "profile", "validate_table"]


def load_table(path_or_name: str | Path | LatencyTable) -> LatencyTable:
    """A latency table from its directory, or by name under the tables root ($LATBENCH_TABLES,
    else ./tables): "cpu" (the device's only table), "cpu/efficientformerv2-r224"."""
    if isinstance(path_or_name, LatencyTable):
        return path_or_name
    return LatencyTable.load(find_table(path_or_name))


def estimate(table: LatencyTable | str | Path, target: Target, *, resolution: int | None = None) -> Estimate:
    """The estimated latency of one target from a table (with the method, the constants and any
    warnings: an uncalibrated table, doubtful entries). Named models are taken at their own
    default resolution unless `resolution` says otherwise."""
    t = load_table(table)
    return LatencyEstimator(t).estimate(to_candidate(target, resolution))


def estimate_many(table: LatencyTable | str | Path, targets: Iterable[Target], *,
                  resolution: int | None = None) -> Any:
    """Estimates of many targets as a pandas DataFrame: name, latency_ms, plain_sum_ms, params,
    macs, calibrated, warnings (one row per target, in order)."""
    import pandas as pd

    t = load_table(table)
    est = LatencyEstimator(t)
    rows = []
    if isinstance(targets, (str, Path, Arch, dict, Candidate)):  # one target, not the letters of a name
        targets = [targets]
    for target in targets:
        c = to_candidate(target, resolution)
        e = est.estimate(c)
        rows.append({"name": e.name, "latency_ms": e.latency_ms, "plain_sum_ms": e.plain_sum_ms,
                     "params": c.params(), "macs": c.macs(), "calibrated": e.calibrated,
                     "warnings": "; ".join(e.warnings) or None})
    return pd.DataFrame(rows, columns=["name", "latency_ms", "plain_sum_ms", "params", "macs", "calibrated",
                                       "warnings"])


def mes(table: LatencyTable | str | Path, target: Target, *, config: str | Path | None = None,
        latency_unit: str | None = None, alpha_latency: float | None = None, alpha_size: float | None = None) -> float:
    """The Mobile Efficiency Score of a target: its parameters and its latency estimated from the
    table, with the default units (3M parameters; MobileNetV2-1.0's latency from the same table)
    and exponents, or those of a MES config file / the overrides."""
    from latbench.core.text import weights_mb
    from latbench.efficiency.score import MESConfig, config_with_overrides, resolve

    t = load_table(table)
    cfg = MESConfig.load(config) if config is not None else MESConfig()
    cfg = config_with_overrides(cfg, latency_unit=latency_unit, alpha_latency=alpha_latency, alpha_size=alpha_size)
    score = resolve(cfg, t)
    c = to_candidate(target)
    params = c.params()
    return score({"params": params, "latency": LatencyEstimator(t).estimate(c).latency_ms, "macs": c.macs(),
                  "weights_mb": weights_mb(params)})


def open_device(device: str = "cpu", **options: Any) -> Any:
    """An open device runner (use it as a context manager), e.g. open_device("cpu", threads=1)."""
    from device_runners import open_runner

    return open_runner(device, **options)


def _progress(progress: bool | ProgressFn):
    import contextlib

    if callable(progress):
        return contextlib.nullcontext(progress)
    return phase_progress(bool(progress))


def profile(target: Target, device: str = "cpu", *, runs: int | None = None, rounds: int = 3, warmup: int = 10,
            resolution: int | None = None, progress: bool | ProgressFn = False, **device_options: Any) -> ProfileResult:
    """Measure one model (or an .onnx / .mlpackage / .tflite file) on a device: latency by consensus of
    rounds, pooled sample statistics, per-op and per-block breakdowns, provenance."""
    from latbench.measuring.profile import profile as run_profile

    spec = str(target) if isinstance(target, (str, Path)) else to_candidate(target, resolution)
    with open_device(device, **device_options) as runner, _progress(progress) as bar:
        return run_profile(spec, runner, runs=runs, warmup=warmup, resolution=resolution, rounds=rounds,
                           progress=bar)


def build_table(device: str = "cpu", *, space: str | Path | SearchSpace | bool | None = None,
                models: Sequence[str] = (), archs: Sequence[str | Path] = (), out: str | Path | None = None,
                resolution: int | None = None, rounds: int = 3, max_rounds: int = 8, runs: int | None = None,
                calibrate: int = 8, force: bool = False, jobs: int = 1, progress: bool | ProgressFn = False,
                **device_options: Any) -> LatencyTable:
    """Build (or resume, or extend) the latency table of a device: for a search space (`space`:
    True for the default one, a YAML path or a SearchSpace) and/or named models and arch files.
    One resolution per call (the space's first unless `resolution`). Exports run in this process
    unless `jobs` > 1 (worker processes re-import a script's main module: guard it with
    `if __name__ == "__main__":` then)."""
    from latbench.measuring.consensus import ConsensusRule
    from latbench.tables.build import BuildSettings, TableBuilder, plan_tables

    if isinstance(models, (str, Path)):  # one model, not the letters of its name
        models = [str(models)]
    if isinstance(archs, (str, Path)):
        archs = [archs]
    if space is True:
        space = SearchSpace.default()
    elif isinstance(space, (str, Path)):
        space = SearchSpace.load(space)
    elif space is False:
        space = None
    naming = space or SearchSpace.default()
    [plan] = plan_tables(space=space, models=models, archs=[str(a) for a in archs],
                         resolutions=[resolution or naming.resolutions[0]], out=out, device_id=device,
                         calibrate=calibrate)
    settings = BuildSettings(rounds=rounds, runs=runs, calibration_models=calibrate, jobs=jobs,
                             consensus=ConsensusRule.for_rounds(rounds, max_rounds))
    with open_device(device, **device_options) as runner, _progress(progress) as bar:
        res = TableBuilder(runner, plan.out, settings, force=force, progress=bar).build(
            plan.configs, space=plan.space, resolution=plan.resolution, calibration=plan.calibration)
    return res.table


def validate_table(table: LatencyTable | str | Path, device: str | None = None, *, samples: int = 12,
                   named: bool = True, passes: int = 2, rounds: int = 3, seed: int = 0, jobs: int = 1,
                   progress: bool | ProgressFn = False, **device_options: Any) -> ValidationResult:
    """Measure random subnets of the table's space (and S0-L) end to end in `passes` passes and
    compare with the table's estimates, the plain sum and a MACs-proportional estimate."""
    from latbench.blocks.candidates import sample_candidates
    from latbench.estimation.validate import validate_table as run_validate

    t = load_table(table)
    cands = sample_candidates(t.space(), int(t.meta.get("resolution") or 224), samples, seed, named=named)
    if not cands:
        raise UsageError("nothing to validate: give samples > 0 or keep S0-L")
    with open_device(device or t.meta.get("device_id") or "cpu", **device_options) as runner, \
            _progress(progress) as bar:
        return run_validate(t, runner, cands, rounds=rounds, passes=passes, seed=seed, jobs=jobs, progress=bar)


def check_table(table: LatencyTable | str | Path, device: str | None = None, *, samples: int | None = None,
                keys: Sequence[str] = (), rounds: int = 3, fix: bool = False, seed: int = 0, jobs: int = 1,
                progress: bool | ProgressFn = False, sample: int | None = None,
                **device_options: Any) -> CheckResult:
    """Re-measure entries of a table (all, or `samples` drawn at random, flagged first; `sample` is
    the old name) and report those that moved beyond the noise; with `fix`, record the new rounds
    in its journal and derive the table again."""
    from latbench.tables.check import check_table as run_check

    sample = samples if samples is not None else sample
    t = load_table(table)
    with open_device(device or t.meta.get("device_id") or "cpu", **device_options) as runner, \
            _progress(progress) as bar:
        return run_check(t, runner, sample=sample, keys=keys, seed=seed, rounds=rounds, fix=fix, jobs=jobs,
                         progress=bar)
