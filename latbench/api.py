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

import contextlib
from collections.abc import Callable, Iterable, Sequence
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

__all__ = ["FastEstimator", "adapt_table", "build_table", "check_table", "diff_tables", "estimate", "estimate_many",
           "export_artifacts", "load_table", "mes", "mes_report", "open_device", "probe_device", "profile",
           "repair_table", "run_search", "upgrade_table", "validate_table"]


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
        rows.append({"name": e.name, "latency_ms": e.latency_ms, "typical_ms": e.typical_ms,
                     "plain_sum_ms": e.plain_sum_ms, "params": c.params(), "macs": c.macs(),
                     "calibrated": e.calibrated, "warnings": "; ".join(e.warnings) or None})
    return pd.DataFrame(rows, columns=["name", "latency_ms", "typical_ms", "plain_sum_ms", "params", "macs",
                                       "calibrated", "warnings"])


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


def open_device(device: str | None = None, *, table_device: str | None = None, **options: Any) -> Any:
    """An open device runner (use it as a context manager), e.g. open_device("cpu", threads=1).
    Without `device`: `table_device` (the table's own), else latbench.toml's `device`, else cpu;
    latbench.toml's `threads` applies when not given and the device kind takes threads."""
    from device_runners import open_runner, runner_class, unaccepted_options
    from latbench.core.config import default, default_device

    device_id = default_device(table_device) if device is None else device
    threads = default("threads")
    if "threads" not in options and threads is not None and not unaccepted_options(runner_class(device_id),
                                                                                      {"threads": threads}):
        options["threads"] = threads
    return open_runner(device_id, **options)


def open_table_device(table: LatencyTable, device: str | None = None, **options: Any) -> Any:
    """The device a table is measured on again (validate, check, upgrade, mes report --measure):
    `device`, else the table's own. On the table's own device every option not given is the
    table's (threads, pinned cores, LiteRT's delegate, compute units: what its kind records), so
    it is timed as it was built; latbench.toml's threads apply only where neither says."""
    from device_runners import runner_class, unaccepted_options

    own = table.meta.get("device_id")
    if own and device in (None, own):
        cls = runner_class(own)
        if cls.claims(own):  # not a farm pool, nor a bare id another kind was guessed for
            recorded = {k: v for k, v in cls.table_options(table.device).items()
                        if k not in options and not unaccepted_options(cls, {k: v})}
            options = {**recorded, **options}
    return open_device(device, table_device=own, **options)


def _progress(progress: bool | ProgressFn):
    if callable(progress):
        return contextlib.nullcontext(progress)
    return phase_progress(bool(progress))


def profile(target: Target, device: str | None = None, *, runs: int | None = None, rounds: int = 3, warmup: int = 10,
            resolution: int | None = None, progress: bool | ProgressFn = False, out: str | Path | None = None,
            dtype: str | None = None, **device_options: Any) -> ProfileResult:
    """Measure one model (or an .onnx / .mlpackage / .tflite file) on a device: latency by consensus of
    rounds, pooled sample statistics, per-op and per-block breakdowns, provenance. With `out`, the
    profile files (profile.json, CSVs, breakdown plot) are written there (`result.files`). `dtype`:
    the precision a model is exported in (fp32, fp16, int8; None: the device's default)."""
    from latbench.core.fileio import writable_dir
    from latbench.measuring.profile import profile as run_profile

    if runs is not None and runs < 1:
        raise UsageError(f"--runs must be >= 1, got {runs}")
    if rounds < 1 or warmup < 0:
        raise UsageError("--rounds must be >= 1 and --warmup >= 0")
    from latbench.core.formats import format_of
    from latbench.export.common import check_precision

    if check_precision(dtype) is not None and isinstance(target, (str, Path)) and format_of(target) is not None:
        raise UsageError("--dtype chooses how a model is exported; an artifact file already has its precision")
    if out is not None:
        writable_dir(out, create=False)
    spec = str(target) if isinstance(target, (str, Path)) else to_candidate(target, resolution)
    with open_device(device, **device_options) as runner, _progress(progress) as bar:
        result = run_profile(spec, runner, runs=runs, warmup=warmup, resolution=resolution, rounds=rounds,
                             progress=bar, precision=dtype)
    if out is not None:
        from latbench.report.profile_files import write_profile

        result.files = write_profile(result, out)
    return result


def build_settings(*, rounds: int = 3, max_rounds: int = 8, runs: int | None = None, calibrate: int = 8,
                   jobs: int = 1, time_cap: float | None = None, precision: float | str | None = 0.02,
                   budget: float | str | None = None, cool_down: bool = True, dtype: str | None = None,
                   model_time_cap: float | None = None, min_time: float | None = None) -> Any:
    """The BuildSettings of a build, with its options checked (one-line UsageErrors). `dtype`: the
    artifacts' precision (fp32, fp16, int8; None: the device format's default). `precision`:
    what entries are held to where the device's noise allows (rules derived from its profile;
    None: the consensus rule as given, at 2 %); `budget`: device seconds (or "10m") after which no
    new round starts; `cool_down`: pause while the device is hot; `model_time_cap`: seconds a
    whole model's round samples at most (default: the larger of `time_cap` and 4 s); `min_time`:
    seconds every round samples at least before its CI may stop it (default 0.3 s)."""
    from latbench.export.common import check_precision
    from latbench.measuring.consensus import ConsensusRule
    from latbench.measuring.noise import parse_duration, parse_precision
    from latbench.tables.build import BuildSettings

    target = None if precision is None else parse_precision(precision)
    rules = {"target_precision": target, "budget_s": None if budget is None else parse_duration(budget),
             "cool_down": bool(cool_down)}

    if jobs < 1 or rounds < 1:
        raise UsageError("--jobs and --rounds must be >= 1")
    if max_rounds < rounds:
        raise UsageError(f"--max-rounds ({max_rounds}) must be >= --rounds ({rounds})")
    if runs is not None and runs < 1:
        raise UsageError(f"--runs must be >= 1, got {runs}")
    caps = {} if time_cap is None else {"block_time_cap_s": time_cap, "model_time_cap_s": max(time_cap, 4.0)}
    for field, value, what in (("model_time_cap_s", model_time_cap, "model time cap"),
                               ("min_time_s", min_time, "minimum round time")):
        if value is not None:
            if value <= 0:
                raise UsageError(f"the {what} must be > 0 s, got {value}")
            caps[field] = float(value)
    return BuildSettings(rounds=rounds, runs=runs, calibration_models=calibrate, jobs=jobs, precision=check_precision(dtype),
                         consensus=ConsensusRule.for_rounds(rounds, max_rounds, tolerance=target or 0.02),
                         **caps, **rules)


def plan_builds(device: str | None = None, *, space: str | Path | SearchSpace | bool | None = None,
                models: Sequence[str] | str = (), archs: Sequence[str | Path] | str | Path = (),
                resolutions: Sequence[int] | None = None, out: str | Path | None = None, calibrate: int = 8,
                reference: bool = True, dtype: str | None = None) -> list[Any]:
    """The tables a build makes (one TablePlan per resolution), every input checked and every
    table directory proven writable before any device is opened. A `dtype` other than the device
    format's default names the default directory apart (tables/cpu/efficientformerv2-r224-int8)."""
    from latbench.core.config import default_device
    from latbench.core.fileio import writable_dir
    from latbench.tables.build import plan_tables

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
    device_id = default_device() if device is None else device
    plans = plan_tables(space=space, models=list(models), archs=[str(a) for a in archs], resolutions=resolutions,
                        out=out, device_id=device_id, calibrate=calibrate, reference=reference,
                        precision=_named_precision(device_id, dtype))
    for plan in plans:
        writable_dir(plan.out, "table directory", create=False)
    return plans


def _named_precision(device_id: str, dtype: str | None) -> str | None:
    """The precision a default table directory is named by: `dtype` unless it is what the device's
    artifact format defaults to (fp32 ONNX / TFLite, fp16 Core ML), so those keep their names."""
    from latbench.export.common import DEFAULT_PRECISION, check_precision

    if check_precision(dtype) is None:
        return None
    try:
        from device_runners import runner_class

        fmt = runner_class(device_id).artifact_format
    except Exception:  # a farm pattern names no one kind: name the directory by the dtype
        return dtype
    return None if DEFAULT_PRECISION.get(fmt) == dtype else dtype


def build_planned(runner: Any, plans: Sequence[Any], settings: Any, *, force: bool = False,
                  progress: ProgressFn | None = None) -> list[Any]:
    """Measure planned tables on an open runner (or a device farm): the one place a build runs,
    for the API, `lut build` and `demo`. Returns a BuildResult per table."""
    from latbench.tables.build import TableBuilder

    return [TableBuilder(runner, plan.out, settings, force=force, progress=progress).build(
        plan.configs, space=plan.space, resolution=plan.resolution, calibration=plan.calibration)
        for plan in plans]


def build_tables(devices: str | Sequence[str] | None = None, *, cluster: str | None = None,
                 separate_tables: bool = False, pool_tolerance: float | None = None,
                 space: str | Path | SearchSpace | bool | None = None, models: Sequence[str] | str = (),
                 archs: Sequence[str | Path] | str | Path = (), resolutions: Sequence[int] | None = None,
                 out: str | Path | None = None, calibrate: int = 8, reference: bool = True, rounds: int = 3,
                 max_rounds: int = 8, runs: int | None = None, jobs: int = 1, time_cap: float | None = None,
                 force: bool = False, progress: bool | ProgressFn = False,
                 device_options: Callable[[str], dict[str, Any]] | dict[str, Any] | None = None,
                 precision: float | str | None = 0.02, budget: float | str | None = None,
                 cool_down: bool = True, dtype: str | None = None) -> list[Any]:
    """Build (resume, extend) tables on one device, or on a device farm: several `devices` of one
    model on this host, or `cluster` (a Ray address; "" for $RAY_ADDRESS) whose agents serve them,
    pooled into one table (`separate_tables`: one per device). `dtype`: the artifacts' precision
    (fp32, fp16, int8; None: the device's default), recorded in meta.json; a non-default one gets
    its own default directory. `device_options`: the runner options,
    one dict for all devices or a function of the device id. Returns a BuildResult per table; what
    `lut build` runs."""
    devices, farm = _farm_devices(devices, cluster, "build")
    settings = build_settings(rounds=rounds, max_rounds=max_rounds, runs=runs, calibrate=calibrate, jobs=jobs,
                              time_cap=time_cap, precision=precision, budget=budget, cool_down=cool_down,
                              dtype=dtype)

    def options_for(device_id: str) -> dict[str, Any]:
        return dict(device_options(device_id) if callable(device_options) else (device_options or {}))

    def plans_for(device_id: str, where: str | Path | None) -> list[Any]:
        return plan_builds(device_id, space=space, models=models, archs=archs, resolutions=resolutions, out=where,
                           calibrate=calibrate, reference=reference, dtype=dtype)

    if separate_tables and not farm:
        raise UsageError("--separate-tables needs several --device (or --cluster)")
    if not farm:
        plans = plans_for(devices[0], out)
        with open_device(devices[0], **options_for(devices[0])) as runner, _progress(progress) as bar:
            return build_planned(runner, plans, settings, force=force, progress=bar)
    plans_for(devices[0], out)  # bad arguments: say so before any device is opened
    pool = _open_farm(devices, cluster, rule=settings.consensus, separate=separate_tables,
                      tolerance=pool_tolerance, options_for=options_for)
    with pool, _progress(progress) as bar:
        if separate_tables:
            return _build_separately(pool, lambda part, fid, prog: build_planned(
                part, plans_for(fid, _per_device_out(out, fid)), settings, force=force, progress=prog), bar)
        return build_planned(pool, plans_for(pool.device_id, out), settings, force=force, progress=bar)


def _farm_devices(devices: str | Sequence[str] | None, cluster: str | None, what: str) -> tuple[list[str], bool]:
    """The device ids a build or adapt measures on (the default device when none is given) and
    whether they make a device farm (several ids, or a cluster); one-line errors for a farm
    without Ray and a cluster without devices."""
    from latbench.core.config import default_device

    given = [devices] if isinstance(devices, str) else list(devices or [])
    farm = cluster is not None or len(given) > 1
    if farm:
        from latbench.measuring.farm import require_ray

        require_ray("--cluster" if cluster is not None else f"several --device in one {what}")
    if cluster is not None and not given:
        raise UsageError("--cluster needs --device: farm device ids, device ids, globs or model:KIND:MODEL "
                         "(see `latbench devices --cluster`)")
    return given or [default_device()], farm


def runner_opener(device_id: str, options: dict[str, Any]) -> Callable[[], Any]:
    """A picklable callable opening `device_id`'s runner wherever it runs (a device actor)."""
    import functools

    from device_runners import open_runner

    return functools.partial(open_runner, device_id, **options)


def _open_farm(devices: Sequence[str], cluster: str | None, *, rule: Any, separate: bool,
               tolerance: float | None, options_for: Callable[[str], dict[str, Any]]) -> Any:
    """The FarmDispatcher a build measures with: the cluster's devices matching `devices`, or the
    named devices of this host, each in its own Ray actor."""
    from latbench.measuring.farm.cluster import connect, open_cluster_farm, open_local_farm
    from latbench.measuring.farm.dispatcher import PoolCheck

    if tolerance is not None and not 0 <= tolerance < 1:
        raise UsageError(f"--pool-tolerance must be a fraction in [0, 1), got {tolerance}")
    pool = None if separate else PoolCheck(rule, **({} if tolerance is None else {"tolerance": tolerance}))
    if cluster is not None:
        disconnect = connect(cluster or None)
        try:
            return open_cluster_farm(devices, pool=pool, on_close=disconnect)
        except BaseException:
            disconnect()
            raise
    openers = {d: runner_opener(d, options_for(d)) for d in devices}
    return open_local_farm(devices, openers, pool=pool)


def _build_separately(farm: Any, build_one: Callable[[Any, str, ProgressFn], list], progress: ProgressFn) -> list:
    """One table (set) per device of the farm, the devices measuring in parallel.
    `build_one(dispatcher, device id, progress)` builds one device's tables and returns the results."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    parts = farm.split()
    lock = threading.Lock()

    def locked(prefix: str) -> ProgressFn:
        def update(phase: str, done: int, total: int, detail: str | None = None) -> None:
            with lock:
                progress(f"{prefix} {phase}", done, total, detail)

        return update

    with ThreadPoolExecutor(max_workers=len(parts)) as workers:
        futures = [workers.submit(build_one, part, part.device_id, locked(part.device_id)) for part in parts]
        results = []
        for f in futures:
            results.extend(f.result())
    return results


def _per_device_out(out: str | Path | None, device_id: str) -> str | None:
    """The out directory of one device's table with separate tables: a directory per device under it."""
    if out is None:
        return None
    return str(Path(out) / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in device_id))


def build_table(device: str | None = None, *, space: str | Path | SearchSpace | bool | None = None,
                models: Sequence[str] = (), archs: Sequence[str | Path] = (), out: str | Path | None = None,
                resolution: int | None = None, rounds: int = 3, max_rounds: int = 8, runs: int | None = None,
                calibrate: int = 8, force: bool = False, jobs: int = 1, progress: bool | ProgressFn = False,
                precision: float | str | None = 0.02, budget: float | str | None = None, dtype: str | None = None,
                **device_options: Any) -> LatencyTable:
    """Build (or resume, or extend) the latency table of a device: for a search space (`space`:
    True for the default one, a YAML path or a SearchSpace) and/or named models and arch files.
    One resolution per call (the space's first unless `resolution`). Exports run in this process
    unless `jobs` > 1 (worker processes re-import a script's main module: guard it with
    `if __name__ == "__main__":` then). Without `device`: latbench.toml's, else cpu. `precision`
    (0.02 or "2%") is what entries are held to where the device's noise allows (None: the fixed
    consensus rule); `budget` (seconds or "10m") stops new rounds after that much measuring.
    `dtype`: the artifacts' precision ("int8": quantized in the device's format: QDQ ONNX,
    full-integer TFLite, W8A8 Core ML; None: the device's default)."""
    from latbench.core.config import default_device

    device = default_device() if device is None else device
    settings = build_settings(rounds=rounds, max_rounds=max_rounds, runs=runs, calibrate=calibrate, jobs=jobs,
                              precision=precision, budget=budget, dtype=dtype)
    naming = SearchSpace.load(space) if isinstance(space, (str, Path)) else space
    naming = naming if isinstance(naming, SearchSpace) else SearchSpace.default()
    [plan] = plan_builds(device, space=space, models=models, archs=archs, out=out, calibrate=calibrate,
                         resolutions=[resolution or naming.resolutions[0]], dtype=dtype)
    with open_device(device, **device_options) as runner, _progress(progress) as bar:
        [res] = build_planned(runner, [plan], settings, force=force, progress=bar)
    return res.table


def adapt_table(sources: LatencyTable | str | Path | Sequence[LatencyTable | str | Path],
                device: str | Sequence[str] | None = None, *, out: str | Path, budget: int | None = None,
                calibrate: int | None = None, rounds: int = 3, max_rounds: int = 8, runs: int | None = None,
                jobs: int = 1, time_cap: float | None = None, precision: float | str | None = 0.02, seed: int = 0,
                force: bool = False, progress: bool | ProgressFn = False, dtype: str | None = None,
                cluster: str | None = None, pool_tolerance: float | None = None, **device_options: Any) -> Any:
    """A complete table for `device` from fully measured `sources` (tables of one space and
    resolution, paths or names) and `budget` measurements on the device (default 20: blocks the
    transfer model learns most from, one per kind as far as the budget goes, the heaviest kinds
    first, plus `calibrate` whole models; None: up to 3 as the budget allows). The rest is
    predicted, each entry with its uncertainty. `dtype`: the target's artifact precision (None:
    int8 when the sources are int8 tables, else the device's default; fp32 sources may adapt to an
    fp16 target); the adapted table records it. Several `device` ids (or a
    `cluster`) measure on a device farm as `build_tables` does, pooled into the one table; the
    device options apply to each. Resumes an interrupted adapt into the same `out`. Returns the
    BuildResult (`.table` is the table)."""
    from latbench.core.fileio import writable_dir
    from latbench.tables.adapt import TableAdapter, plan_adapt, sources_dtype

    if isinstance(sources, (str, Path, LatencyTable)):
        sources = [sources]
    tables = [load_table(s) for s in sources]
    plan = plan_adapt(tables, out, budget=budget, calibrate=calibrate, seed=seed)
    writable_dir(plan.out, "table directory", create=False)
    settings = build_settings(rounds=rounds, max_rounds=max_rounds, runs=runs, calibrate=len(plan.calibration),
                              jobs=jobs, time_cap=time_cap, precision=precision,
                              dtype=dtype if dtype is not None else sources_dtype(tables))
    devices, farm = _farm_devices(device, cluster, "adapt")
    if not farm:
        opened = open_device(devices[0], **device_options)
    else:
        opened = _open_farm(devices, cluster, rule=settings.consensus, separate=False, tolerance=pool_tolerance,
                            options_for=lambda _: dict(device_options))
    with opened as runner, _progress(progress) as bar:
        return TableAdapter(runner, plan.out, settings, force=force, progress=bar).adapt(plan)


def upgrade_table(table: LatencyTable | str | Path, device: str | None = None, *, count: int | None = None,
                  rounds: int = 3, max_rounds: int = 8, runs: int | None = None, jobs: int = 1,
                  time_cap: float | None = None, precision: float | str | None = 0.02,
                  progress: bool | ProgressFn = False, **device_options: Any) -> Any:
    """Measure the predicted entries of an adapted table (all, or the `count` least certain) on
    its device, refit the transfer model on everything measured and rewrite the table; what
    `lut build --upgrade [N]` runs. The upgrade that leaves no entry predicted also measures the
    whole models a full build calibrates on (tables.adapt.upgrade_calibration). Returns the
    BuildResult."""
    from latbench.tables.adapt import upgrade_calibration, upgrade_configs
    from latbench.tables.build import TableBuilder

    t = load_table(table)
    configs = upgrade_configs(t, count)
    settings = build_settings(rounds=rounds, max_rounds=max_rounds, runs=runs, calibrate=0, jobs=jobs,
                              time_cap=time_cap, precision=precision,
                              dtype=t.dtype)
    resolution = int(t.meta.get("resolution") or configs[0].resolution)
    items = {c.key: c for c in configs}
    space = t.space() if (t.meta.get("space") or {}).get("definition") else None
    calibration = upgrade_calibration(t, configs, space)
    with open_table_device(t, device, **device_options) as runner, \
            _progress(progress) as bar:
        # Exactly the predicted entries: their empties are entries of the table too, measured
        # (or predicted) on their own account.
        return TableBuilder(runner, t.path, settings, progress=bar).measure(items, calibration, space=space,
                                                                             resolution=resolution)


def probe_device(device: str = "cpu", *, rounds: int = 3, resolution: int = 224, jobs: int = 1,
                 progress: bool | ProgressFn = False, **device_options: Any) -> dict[str, Any]:
    """The noise profile of a device alone: `rounds` rounds of each of the three anchor blocks a
    table build measures, and the rules a build would derive from them (a dict: profile, rules,
    device)."""
    from latbench.measuring.session import probe_noise
    from latbench.tables.build import BuildSettings, default_anchors

    if not isinstance(rounds, int) or rounds < 2:
        raise UsageError(f"a probe needs at least 2 rounds per anchor, got {rounds!r}")
    settings = BuildSettings()
    with open_device(device, **device_options) as runner, _progress(progress) as bar:
        return probe_noise(runner, default_anchors(resolution), rounds, settings.plan(), progress=bar, export_jobs=jobs)


def validation_candidates(table: LatencyTable, samples: int = 12, seed: int = 0, named: bool = True) -> list[Any]:
    """What a validation measures: `samples` random subnets of the table's space (and S0-L)."""
    from latbench.blocks.candidates import sample_candidates

    if samples < 0:
        raise UsageError(f"--samples must be >= 0, got {samples}")
    cands = sample_candidates(table.space(), int(table.meta.get("resolution") or 224), samples, seed, named=named)
    if not cands:
        raise UsageError("nothing to validate: give --samples > 0 or keep S0-L")
    return cands


def validate_table(table: LatencyTable | str | Path, device: str | None = None, *, samples: int = 12,
                   named: bool = True, passes: int = 2, rounds: int = 3, seed: int = 0, jobs: int = 1,
                   progress: bool | ProgressFn = False, strict: bool = False,
                   journal_dir: str | Path | None = None, runner: Any = None, time_cap_s: float = 4.0,
                   budget: float | str | None = None, **device_options: Any) -> ValidationResult:
    """Measure random subnets of the table's space (and S0-L) end to end in `passes` passes and
    compare with the table's estimates, the plain sum and a MACs-proportional estimate. `strict`:
    refuse a table measured on another device or runtime; `journal_dir`: keep every raw
    measurement there; `runner`: an open runner to use instead of opening `device`; `time_cap_s`:
    the longest one round of a model samples; `budget`: device seconds (or "1m") per pass after which
    no new round of a model starts."""
    from latbench.core.fileio import writable_dir
    from latbench.estimation.validate import validate_table as run_validate
    from latbench.measuring.noise import parse_duration

    budget_s = None if budget is None else parse_duration(budget)
    t = load_table(table)
    cands = validation_candidates(t, samples, seed, named)
    if journal_dir is not None:
        writable_dir(journal_dir, "--keep-journal directory", create=False)
    opened = runner if runner is not None else open_table_device(t, device, **device_options)
    with (contextlib.nullcontext(opened) if runner is not None else opened) as r, _progress(progress) as bar:
        if strict:
            t.check_provenance(r.describe(), strict=True)
        return run_validate(t, r, cands, rounds=rounds, passes=passes, seed=seed, jobs=jobs, progress=bar,
                            journal_dir=journal_dir, time_cap_s=time_cap_s, budget_s=budget_s)


def check_table(table: LatencyTable | str | Path, device: str | None = None, *, samples: int | None = None,
                keys: Sequence[str] = (), rounds: int = 3, fix: bool = False, seed: int = 0, jobs: int = 1,
                progress: bool | ProgressFn = False, sample: int | None = None,
                **device_options: Any) -> CheckResult:
    """Re-measure entries of a table (all, or `samples` drawn at random, flagged first; `sample` is
    the old name) and report those that moved beyond the noise; with `fix`, record the new rounds
    in its journal and derive the table again."""
    from latbench.tables.check import check_table as run_check
    from latbench.tables.check import pick_entries, require_journal

    sample = samples if samples is not None else sample
    t = load_table(table)
    if rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {rounds}")
    require_journal(t)
    pick_entries(t, sample, seed, keys)  # bad keys or sample size: say so before opening a device
    with open_table_device(t, device, **device_options) as runner, \
            _progress(progress) as bar:
        return run_check(t, runner, sample=sample, keys=keys, seed=seed, rounds=rounds, fix=fix, jobs=jobs,
                         progress=bar)


def repair_table(path: str | Path) -> LatencyTable:
    """Rederive a damaged table's CSVs and meta.json from its journal (measures nothing)."""
    from latbench.tables.build import repair_table as rederive

    return rederive(path)


def diff_tables(a: LatencyTable | str | Path, b: LatencyTable | str | Path) -> dict[str, Any]:
    """Per-key latency ratios B/A of two tables (devices, runtime versions, fp32 and int8 of one
    device): the common keys with kind, both latencies, the ratio and the speedup A/B, the keys
    only one has, the median ratio, per block kind the median, min and max ratio and the count
    (`kinds`), what the ratio compares (`ratio`: "int8/fp32" across precisions, else "B/A"), and
    how the two devices' provenance differs; where one is an adapted table of the same device and
    precision as the other, how its predicted entries compare with the other's measurements
    (`predictions`, see latbench.tables.compare.prediction_check; None otherwise)."""
    from latbench.tables.compare import block_ratios, kind_ratios, prediction_check, ratio_label

    ta, tb = load_table(a), load_table(b)
    ma, mb = ta.latency_ms(), tb.latency_ms()
    rows = block_ratios(ta, tb)
    ratios = sorted(r["ratio"] for r in rows if r["ratio"])
    return {"a": str(ta.path), "b": str(tb.path), "common": len(rows),
            "only_a": sorted(set(ma) - set(mb)), "only_b": sorted(set(mb) - set(ma)),
            "median_ratio": ratios[len(ratios) // 2] if ratios else None, "ratio": ratio_label(ta, tb),
            "kinds": kind_ratios(rows), "provenance_diff": ta.provenance_diff(tb.device),
            "predictions": prediction_check(ta, tb), "rows": rows}


def export_targets(*, space: str | Path | SearchSpace | bool | None = None, model: str | None = None,
                   arch: str | Path | None = None, resolution: int | None = None) -> list[Any]:
    """What an export makes: every block configuration of a space (at `resolution`, else all of
    its resolutions), or one model or arch file (checked against `space` when both are given)."""
    from latbench.blocks.candidates import resolve_candidate
    from latbench.blocks.configs import space_blocks
    from latbench.models import list_models

    if space is None and model is None and arch is None:
        raise UsageError("nothing to export: give --space [FILE], --model NAME or --arch FILE")
    if space is True:
        space = SearchSpace.default()
    elif isinstance(space, (str, Path)):
        space = SearchSpace.load(str(space) or None)
    elif space is False:
        space = None
    if model is None and arch is None:
        assert isinstance(space, SearchSpace)
        if resolution is not None:
            space.check_resolution(resolution)
        return space_blocks(space, resolution)
    if model is not None:
        if model not in list_models():
            raise UsageError(f"unknown model {model!r}: known models are {', '.join(list_models())}")
        cand = resolve_candidate(model, resolution)
    else:
        if str(arch) in list_models():
            raise UsageError(f"--arch expects an arch file; {arch!r} is a model name, use --model {arch}")
        if not Path(str(arch)).is_file():
            raise UsageError(f"arch file {arch} does not exist")
        cand = resolve_candidate(str(arch), resolution)
    if isinstance(space, SearchSpace):
        if cand.arch is None:
            raise UsageError(f"{cand.name} is not an EfficientFormerV2 subnet, so it cannot be checked against a space")
        space.validate(cand.arch)
    return [cand]


def export_artifacts(*, space: str | Path | SearchSpace | bool | None = None, model: str | None = None,
           arch: str | Path | None = None, formats: str | Sequence[str] = ("onnx",), out: str | Path | None = None,
           resolution: int | None = None, precision: str | None = None, deployment_target: str | None = None,
           jobs: int | None = 1, force: bool = False, progress: bool | ProgressFn = False,
           quantization: Any = None) -> Any:
    """Export a space's block configurations, a model or an arch file to ONNX / Core ML / TFLite,
    content-addressed in the export cache (and copied to `out`), each checked against PyTorch.
    `precision`: fp32, fp16 or int8 (ONNX: onnxruntime's static QDQ quantization with the recipe
    `quantization`, a QuantRecipe or a mapping of its fields, None: the default recipe; TFLite:
    ai-edge-quantizer's full-integer quantization with the recipe's calibration).
    Returns the ExportReport (records, failures, manifest)."""
    from latbench.core.fileio import writable_dir
    from latbench.export import export_items, parse_formats
    from latbench.export.common import DEFAULT_DEPLOYMENT_TARGET, check_deployment_target

    fmts = parse_formats(formats)
    target = check_deployment_target(deployment_target or DEFAULT_DEPLOYMENT_TARGET)
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    items = export_targets(space=space, model=model, arch=arch, resolution=resolution)
    if out is not None:
        writable_dir(out, create=False)
    return export_items(items, fmts, out, precision, target, jobs=jobs, progress=progress, force=force,
                        quantization=quantization)


def _mes_config(config: str | Path | None, precision: str | None = None, **overrides: Any) -> Any:
    """The MES config of a file (or the defaults, as they apply to a table of `precision`) with
    the command line's overrides."""
    from latbench.efficiency.score import MESConfig, config_with_overrides, for_precision

    cfg = MESConfig.load(config) if config is not None else for_precision(MESConfig(), precision)
    return config_with_overrides(cfg, **overrides)


def model_file_mb(candidates: Sequence[Candidate], table: LatencyTable) -> dict[str, dict[str, float]]:
    """candidate name -> {"model_mb": its model file's size in 10^6 bytes}, exported (or found in the
    export cache) in the format of the table's device and the table's precision."""
    from device_runners import runner_class
    from latbench.core.hashing import tree_size
    from latbench.efficiency.score import MODEL_MB
    from latbench.export.formats import format_of_recipe
    from latbench.measuring.session import export_artifacts

    # An int8 table's recipe names its format (an android device measures ONNX or TFLite);
    # otherwise the device kind's format, and ONNX for a table without a device id.
    device_id = table.meta.get("device_id")
    fmt = (format_of_recipe(table.meta.get("quantization"))
           or (runner_class(device_id).artifact_format if device_id else "onnx"))
    artifacts = export_artifacts(candidates, fmt, 1, table.dtype)
    return {c.name: {MODEL_MB: tree_size(artifacts[c.key].path) / 1e6} for c in candidates}


def run_search(table: LatencyTable | str | Path, accuracy: str, *, target_latency: str | float | None = None,
           target_params: str | float | None = None, target_mes: str | float | None = None,
           space: str | Path | SearchSpace | None = None, seed: int = 0, max_steps: int | None = None,
           mes_config: str | Path | None = None, latency_unit: str | None = None, size_unit: str | None = None,
           alpha_latency: float | None = None, alpha_size: float | None = None, out: str | Path | None = None,
           progress: bool | ProgressFn = False) -> Any:
    """Algorithm 1 (fine-grained joint search) over a table to one target, with an accuracy
    oracle ('proxy', pkg.module:function, or a CSV/YAML of measured accuracies). With `out`, the
    trajectory, Pareto-set arch files and a report are written there. Returns the SearchResult."""
    from latbench.core.fileio import writable_dir
    from latbench.efficiency.score import resolve
    from latbench.search.algorithm import Target as SearchTarget
    from latbench.search.algorithm import run_search as algorithm_1
    from latbench.search.oracles import load_oracle

    if max_steps is not None and max_steps < 1:
        raise UsageError(f"--max-steps must be >= 1, got {max_steps}")
    if out is not None:
        writable_dir(out, create=False)
    t = load_table(table)
    text = [None if v is None else str(v) for v in (target_latency, target_params, target_mes)]
    target = SearchTarget.parse(*text)
    oracle = load_oracle(accuracy)
    scorer = resolve(_mes_config(mes_config, latency_unit=latency_unit, size_unit=size_unit,
                                 alpha_latency=alpha_latency, alpha_size=alpha_size), t)
    columns = [m.getter for m in scorer.metrics if m.getter.startswith("column:")]
    if columns:
        raise UsageError(f"the search cannot score MES metric {columns[0]}: CSV columns exist only for listed "
                         "candidates; use built-in getters (params, macs, latency, weights_mb) in --mes-config")
    if isinstance(space, (str, Path)):
        space = SearchSpace.load(space)
    fast = FastEstimator(t, space or t.space(fallback=True))
    with _progress(progress) as bar:
        result = algorithm_1(fast, oracle, scorer, target, seed=seed, max_steps=max_steps, progress=bar)
    if out is not None:
        from latbench.report.search_files import write_search

        result.files = write_search(result, out, t)
    return result


def mes_report(table: LatencyTable | str | Path, candidates: Iterable[Target], *, accuracy: str | Path | None = None,
               measure: str | None = None, rounds: int = 3, out: str | Path | None = None,
               mes_config: str | Path | None = None, latency_unit: str | None = None,
               size_unit: str | None = None, alpha_latency: float | None = None, alpha_size: float | None = None,
               metrics: str | Path | None = None, progress: bool | ProgressFn = False, dtype: str | None = None,
               **device_options: Any) -> Any:
    """Rank candidates by MES (params, MACs, latency from the table, accuracy, Pareto flags); with
    `measure`, also measure each end to end on that device, exported in `dtype` (None: the table's
    precision); with `out`, write the report files (md, html, csv, json, plots) there. Returns the
    MESReport (`json_rows()` for plain data)."""
    from latbench.blocks.candidates import resolve_candidate, resolve_candidates
    from latbench.core.fileio import writable_dir
    from latbench.efficiency.score import MODEL_MB, REFERENCE, read_metrics_csv, resolve
    from latbench.export.common import check_precision
    from latbench.measuring.models import measure_candidates
    from latbench.report.model import build_report
    from latbench.search.oracles import published_accuracy, read_accuracy_file
    from latbench.tables.table import REFERENCE_MODEL, REFERENCE_RESOLUTION

    if out is not None:
        writable_dir(out, create=False)
    t = load_table(table)
    config = _mes_config(mes_config, t.dtype, latency_unit=latency_unit, size_unit=size_unit,
                         alpha_latency=alpha_latency, alpha_size=alpha_size)
    scorer = resolve(config, t)
    if isinstance(candidates, (str, Path, Arch, dict, Candidate)):
        candidates = [candidates]
    cands: list[Candidate] = []
    for c in candidates:  # a name or file (a YAML list expands to its entries), or an Arch / mapping
        if isinstance(c, (str, Path)):
            cands += resolve_candidates([str(c)], t.meta.get("resolution"))
        else:
            cands.append(to_candidate(c, t.meta.get("resolution")))
    user = read_accuracy_file(accuracy) if accuracy else None
    columns = config.needs_columns()
    if columns and not metrics:
        raise UsageError(f"the MES config uses column:{columns[0]}; give its values with --metrics CSV")
    values = read_metrics_csv(metrics, columns) if metrics else None
    if values is not None:
        missing = [c.name for c in cands if columns and c.name not in values]
        if missing:
            raise UsageError(f"metrics file {metrics} has no row for candidate {missing[0]!r}")
    if any(m.getter == MODEL_MB for m in config.metrics):  # sizes of the model files themselves
        sizes = model_file_mb(cands, t)
        values = {c.name: {**(values or {}).get(c.name, {}), **sizes[c.name]} for c in cands}

    def top1(c: Candidate):
        hit = user.lookup(c.name, c.arch) if user else None
        return hit or published_accuracy(c.model_name or c.name, c.arch, c.resolution)

    measured, mes_measured, device = None, None, None
    if measure:
        if rounds < 1:
            raise UsageError(f"--rounds must be >= 1, got {rounds}")
        to_measure = list(cands)
        latency_metric = config.metric("latency")
        ref = None
        if latency_metric is not None and latency_metric.unit == REFERENCE:
            ref = next((c for c in cands if c.model_name == REFERENCE_MODEL and c.resolution == REFERENCE_RESOLUTION),
                       None)
            if ref is None:
                base = resolve_candidate(REFERENCE_MODEL, REFERENCE_RESOLUTION)
                ref = Candidate(f"{REFERENCE_MODEL} (MES unit)", base.resolution, model_name=base.model_name)
                to_measure.append(ref)
        with open_table_device(t, measure, **device_options) as runner, _progress(progress) as bar:
            measured, desc = measure_candidates(to_measure, runner, rounds=rounds, progress=bar,
                                                precision=check_precision(dtype) or t.dtype)
        model = desc.get("device_model") or desc.get("cpu_model")
        device = f"{measure} ({model})" if model else measure
        mes_measured = scorer
        if ref is not None:
            # Measured scores normalise by MobileNetV2 measured in the same run, on the same device.
            mes_measured = scorer.with_latency_unit(measured[ref.name], f"{REFERENCE_MODEL} measured on {measure}")
    report = build_report(cands, t, scorer, accuracy=top1, measured=measured, mes_measured=mes_measured,
                          measured_device=device, metrics=values, title=f"MES report ({Path(str(t.label())).name})")
    if out is not None:
        from latbench.report.writers import write_report

        report.files = write_report(report, out)
    return report


# -- devices and the farm's agents -------------------------------------------------------------------
def list_devices(**options: Any) -> list[Any]:
    """Every device this host can see, available or not (DeviceInfo: id, kind, available, reason,
    provenance); `options` are runner options (e.g. adb_server) discovery passes on."""
    from device_runners import discover_devices

    return discover_devices(**options)


def farm_devices(cluster: str | None = None) -> list[dict[str, Any]]:
    """Every device the agents of a farm serve (id, host, state, measured, provenance); `cluster`:
    the Ray address (None: RAY_ADDRESS or a local cluster)."""
    from latbench.measuring.farm.cluster import cluster_devices, connect

    stop = connect(cluster or None)
    try:
        return cluster_devices()
    finally:
        stop()


def agent_devices(wanted: Sequence[str] | None = None, **options: Any) -> dict[str, dict[str, Any]]:
    """device id -> provenance of the devices an agent of this host would serve: `wanted`, or every
    available one; a one-line UsageError for one that is missing or unavailable."""
    found = {d.id: d for d in list_devices(**options)}
    out = {}
    for did in wanted or [i for i, d in found.items() if d.available]:
        info = found.get(did)
        if info is None or not info.available:
            why = "not found" if info is None else info.reason
            raise UsageError(f"cannot serve {did}: {why} (see `latbench devices`)")
        out[did] = dict(info.provenance)
    if not out:
        raise UsageError("no device to serve on this host (see `latbench devices`)")
    return out


def serve_agent(cluster: str | None, wanted: Sequence[str] | None = None, *, host: str | None = None,
                options_for: Callable[[str], dict[str, Any]] | None = None,
                say: Callable[[str], None] = lambda line: None, **discover_options: Any) -> int:
    """Serve this host's devices (`wanted`, or every available one: agent_devices) to the farm at
    `cluster` (or RAY_ADDRESS) until stopped (Ctrl-C, SIGTERM): join as a Ray node of this host,
    start a device actor per device (opened with `options_for(device id)`), wait. `say` gets each
    line worth printing. Returns 0 when stopped; DeviceError when the node dies."""
    import json
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys

    from latbench.core.errors import DeviceError
    from latbench.measuring.farm import require_ray
    from latbench.measuring.farm.names import check_host, clean, farm_id, host_resources, serial_resource

    require_ray("latbench agent")
    address = cluster or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("latbench agent needs the cluster's address: --cluster HOST:PORT (or set RAY_ADDRESS)")
    host = check_host(host or clean(socket.gethostname().split(".")[0]))
    devices = agent_devices(wanted, **discover_options)
    openers = {d: runner_opener(d, options_for(d) if options_for else {}) for d in devices}
    resources = host_resources({farm_id(d, host): p for d, p in devices.items()})
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    node = subprocess.Popen([ray_cli, "start", "--address", address, "--num-cpus", "0", "--resources",
                             json.dumps(resources), "--block", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = None
    actors: dict = {}
    previous = signal.getsignal(signal.SIGTERM)
    try:
        from latbench.measuring.farm.cluster import connect, node_with, serve_devices

        stop = connect(address)
        signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs its own handler
        node_id = node_with(serial_resource(farm_id(next(iter(devices)), host)))
        actors = serve_devices(list(devices), openers, host, devices, node_id=node_id)
        for fid in actors:
            model = devices[fid.rsplit("@", 1)[0]].get("device_model") or ""
            say(f"serving {fid} {model}".rstrip())
        say(f"agent of {host} joined {address}; Ctrl-C stops it and its devices")
        code = node.wait()
        if code:
            last = (node.stderr.read() if node.stderr else "").strip().splitlines()[-1:]
            raise DeviceError(f"the Ray node of this agent stopped (exit {code}){': ' + last[0] if last else ''}")
        return 0
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the agent's way to stop
        say(f"agent of {host} stopped")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _release(actors)  # its devices leave the farm now, not when the node is gone
        if stop is not None:
            stop()
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _release(actors: dict) -> None:
    import ray

    for handle in actors.values():
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
