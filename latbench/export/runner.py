"""Export many items to many formats: cache look-up, worker processes, progress, failure isolation."""

from __future__ import annotations

import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latbench.core.errors import UsageError
from latbench.core.fileio import writable_dir
from latbench.core.hashing import tree_sha256, tree_size
from latbench.core.progress import ProgressFn, phase_progress
from latbench.core.text import first_line
from latbench.export.cache import (
    Manifest,
    artifact_relpath,
    content_descriptor,
    content_hash,
    default_cache_dir,
    item_fields,
    remove_stale_temps,
)
from latbench.export.common import (
    DEFAULT_DEPLOYMENT_TARGET,
    DEFAULT_SEED,
    ONNX_OPSET,
    ArtifactRecord,
    Exportable,
    check_deployment_target,
    check_precision,
    cpu_count,
    parse_formats,
    quiet_libraries,
)
from latbench.export.formats import EXPORT_FORMATS
from latbench.export.onnx import DEFAULT_EXPORTER, EXPORTERS, MIN_OPSET
from latbench.export.quantize import QuantRecipe


@dataclass(frozen=True)
class ExportTask:
    """One (item, format) to produce; picklable, sent to a worker process."""

    item: Any
    key: str
    name: str | None
    kind: str
    fmt: str
    precision: str
    deployment_target: str | None
    exporter: str
    opset: int | None
    seed: int
    content_hash: str
    final: str
    versions: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None  # int8: the recipe (QuantRecipe.to_dict())


@dataclass
class ExportReport:
    """Per (item key, format) records, in input order, plus where the manifest lives."""

    out_dir: Path
    records: dict[tuple[str, str], ArtifactRecord]
    wall_seconds: float = 0.0

    @property
    def manifest_path(self) -> Path:
        return Manifest(self.out_dir).path

    @property
    def failures(self) -> list[ArtifactRecord]:
        return [r for r in self.records.values() if r.status == "failed"]

    @property
    def exported(self) -> list[ArtifactRecord]:
        return [r for r in self.records.values() if r.status == "exported"]

    @property
    def cached(self) -> list[ArtifactRecord]:
        return [r for r in self.records.values() if r.status == "cached"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __getitem__(self, key_fmt: tuple[str, str]) -> ArtifactRecord:
        return self.records[key_fmt]

    def __iter__(self) -> Iterator[ArtifactRecord]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    def to_json(self) -> list[dict[str, Any]]:
        return [r.summary() for r in self.records.values()]


def default_jobs() -> int:
    return max(1, min(2, cpu_count()))


def plan_tasks(
    items: Iterable[Exportable],
    formats: Sequence[str],
    out_dir: Path,
    precision: str | None,
    deployment_target: str,
    exporter: str,
    opset: int,
    seed: int,
    quantization: QuantRecipe | dict[str, Any] | None = None,
) -> list[ExportTask]:
    """Unique items x formats, each with its content hash and final path (no I/O). int8 tasks
    carry the quantization recipe (`quantization`, default QuantRecipe()), which their hash covers."""
    recipe = QuantRecipe.from_value(quantization)
    tasks: list[ExportTask] = []
    seen: set[str] = set()
    for item in items:
        key = item.key
        if key in seen:
            continue
        seen.add(key)
        for fmt in formats:
            form = EXPORT_FORMATS[fmt]
            prec = precision or form.default_precision
            target = form.deployment_target(deployment_target, prec) if form.takes_deployment_target else None
            fmt_exporter = form.exporter(exporter)
            fmt_opset = opset if form.takes_opset else None
            quant = form.quant_recipe(recipe) if prec == "int8" else None
            desc = content_descriptor(item, fmt, prec, target, fmt_exporter, fmt_opset, seed, quant)
            chash = content_hash(desc)
            tasks.append(
                ExportTask(
                    item=item, key=key, name=_item_name(item), kind=item.kind, fmt=fmt, precision=prec, deployment_target=target,
                    exporter=fmt_exporter, opset=fmt_opset, seed=seed, content_hash=chash,
                    final=str(out_dir / artifact_relpath(key, fmt, prec, chash)),
                    versions=desc["versions"], fields=item_fields(item), quantization=quant,
                )  # fmt: skip
            )
    return tasks


def _item_name(item: Exportable) -> str | None:
    name = getattr(item, "name", None)
    return name if isinstance(name, str) and name != item.key else None


def run_task(task: ExportTask) -> ArtifactRecord:
    """Export one (item, format); never raises for an export problem: the record says what failed."""
    rec = ArtifactRecord(
        key=task.key, name=task.name, kind=task.kind, format=task.fmt, precision=task.precision, status="exported",
        path=task.final, content_hash=task.content_hash, deployment_target=task.deployment_target,
        exporter=task.exporter, versions=dict(task.versions), fields=dict(task.fields), quantization=task.quantization,
    )  # fmt: skip
    final = Path(task.final)
    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        EXPORT_FORMATS[task.fmt].export(task.item, final, rec, precision=task.precision, exporter=task.exporter,
                                        opset=task.opset, deployment_target=task.deployment_target, seed=task.seed,
                                        quantization=task.quantization)
        rec.sha256 = tree_sha256(final)
        rec.size = tree_size(final)
    except Exception as exc:  # any failure of this one configuration is reported, not raised
        rec.error = first_line(exc, with_type=True)
        rec.traceback = traceback.format_exc(limit=-8)
    rec.export_seconds = round(time.perf_counter() - t0, 4)
    rec.timings = {k: round(v, 4) for k, v in rec.timings.items()}
    if rec.error:
        rec.status = "failed"
    return rec


def _init_worker(formats: tuple[str, ...]) -> None:
    # Ctrl-C goes to the whole process group; the parent decides what to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _prepare_worker(formats)
    except Exception:
        # A failing initializer would break the whole pool; the same import fails again inside
        # each task, where it is reported against that artifact.
        pass


def _prepare_worker(formats: tuple[str, ...]) -> None:
    import threading

    import torch

    # One thread per worker: N workers on N cores, and no oversubscription with onnxruntime.
    torch.set_num_threads(1)
    quiet_libraries()
    try:
        import tqdm

        # coremltools' progress bars would otherwise create tqdm's default multiprocessing lock,
        # a semaphore that leaks (and is warned about) when an interrupted worker is terminated.
        tqdm.tqdm.set_lock(threading.RLock())
    except ImportError:
        pass
    for fmt in formats:
        EXPORT_FORMATS[fmt].warm_worker()


def _failed(task: ExportTask, error: str) -> ArtifactRecord:
    return ArtifactRecord(
        key=task.key, name=task.name, kind=task.kind, format=task.fmt, precision=task.precision, status="failed",
        content_hash=task.content_hash, deployment_target=task.deployment_target, exporter=task.exporter,
        versions=dict(task.versions), fields=dict(task.fields), quantization=task.quantization, error=error,
    )  # fmt: skip


def export_items(
    items: Iterable[Exportable],
    formats: str | Sequence[str] = ("onnx",),
    out_dir: str | Path | None = None,
    precision: str | None = None,
    deployment_target: str = DEFAULT_DEPLOYMENT_TARGET,
    jobs: int | None = 1,
    progress: bool | ProgressFn = False,
    *,
    seed: int = DEFAULT_SEED,
    force: bool = False,
    onnx_exporter: str = DEFAULT_EXPORTER,
    opset: int = ONNX_OPSET,
    on_result: Callable[[ArtifactRecord], None] | None = None,
    quantization: QuantRecipe | dict[str, Any] | None = None,
) -> ExportReport:
    """Export BlockConfigs / Candidates (anything with key, kind, input_shape, build()).

    - `formats`: "onnx", "coreml", "tflite" or several ("onnx,coreml" or a sequence).
    - `precision`: "fp32", "fp16" or "int8" for every format; None uses each format's default
      (fp32 for ONNX and TFLite, fp16 for Core ML). TFLite is fp32 or int8, Core ML fp32 or fp16.
    - `quantization`: the int8 recipe (a QuantRecipe or a mapping of its fields; None: the default
      one); it is recorded in the manifest and part of each int8 artifact's content hash.
    - `out_dir`: None means default_cache_dir() ($LATBENCH_CACHE or ~/.cache/latbench/exports).
    - `jobs`: worker processes (None: min(2, CPUs)); 1 exports in this process.
    - `progress`: a ProgressFn (phase "export"), True for bars on stderr, False for none.
    - `force`: re-export even when a trusted artifact exists.
    - `on_result`: called in this process with every finished or cached record.

    One configuration failing does not stop the others: its record has status "failed" and an
    error, and it is listed in `report.failures`. Bad arguments raise UsageError.
    """
    if progress is True:
        with phase_progress() as bars:
            return export_items(items, formats, out_dir, precision, deployment_target, jobs, bars, seed=seed,
                                force=force, onnx_exporter=onnx_exporter, opset=opset, on_result=on_result,
                                quantization=quantization)
    t_start = time.perf_counter()
    fmts = parse_formats(formats)
    check_precision(precision, fmts)
    for fmt in fmts:
        EXPORT_FORMATS[fmt].check_available()  # one line naming the extra to install, before any work starts
    target = check_deployment_target(deployment_target)
    if onnx_exporter not in EXPORTERS:
        raise UsageError(f"unknown ONNX exporter {onnx_exporter!r}: choose from {', '.join(EXPORTERS)}")
    if opset < MIN_OPSET:
        raise UsageError(f"ONNX opset {opset} is too old: use {MIN_OPSET} or newer")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    out = writable_dir(out_dir if out_dir is not None else default_cache_dir()).resolve()
    remove_stale_temps(out)

    tasks = plan_tasks(items, fmts, out, precision, target, onnx_exporter, opset, seed, quantization)
    manifest = Manifest(out)
    known = manifest.load()
    results: dict[int, ArtifactRecord] = {}
    todo: list[int] = []
    for i, task in enumerate(tasks):
        rec = known.get(task.content_hash)
        if not force and manifest.trusted(rec):
            assert rec is not None
            rec.status = "cached"
            rec.name = task.name  # the same content may have been exported under another name
            results[i] = rec
        else:
            todo.append(i)

    report_progress = progress if callable(progress) else None
    done = [len(tasks) - len(todo)]

    def finish(i: int, rec: ArtifactRecord) -> None:
        results[i] = rec
        manifest.update([rec])
        done[0] += 1
        if report_progress is not None and todo:
            mark = "FAILED " if rec.status == "failed" else ""
            report_progress("export", done[0], len(tasks), f"{mark}{rec.key} [{rec.format}]")
        if on_result is not None:
            on_result(rec)

    if on_result is not None:
        for rec in results.values():
            on_result(rec)
    # Whole models are the long poles: start them first so workers finish together.
    todo.sort(key=lambda i: tasks[i].kind != "model")
    if jobs == 1 or len(todo) <= 1:
        for i in todo:
            finish(i, run_task(tasks[i]))
    else:
        _run_pool([(i, tasks[i]) for i in todo], min(jobs, len(todo)), fmts, finish)

    records = {(tasks[i].key, tasks[i].fmt): results[i] for i in sorted(results)}
    return ExportReport(out, records, round(time.perf_counter() - t_start, 3))


def _run_pool(
    work: list[tuple[int, ExportTask]],
    jobs: int,
    fmts: tuple[str, ...],
    finish: Callable[[int, ArtifactRecord], None],
) -> None:
    """Run tasks on `jobs` spawned workers, at most `jobs` in flight.

    A worker that dies (segfault, out of memory) breaks the pool and every task in flight with
    it. Those are re-run one at a time in a fresh pool, so a repeat crash is pinned on the task
    that causes it and the innocent ones complete.
    """
    import multiprocessing as mp

    # spawn, not fork: forking a process that already runs torch's thread pools can deadlock.
    ctx = mp.get_context("spawn")
    queue = deque(work)
    suspects: deque[tuple[int, ExportTask]] = deque()
    in_flight: dict[Future, tuple[int, ExportTask, bool]] = {}
    pool: ProcessPoolExecutor | None = None

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(fmts,))

    def collect(fut: Future, i: int, task: ExportTask, isolated: bool) -> bool:
        """Record a finished future; False when its worker died (the pool is broken)."""
        try:
            rec = fut.result()
        except BrokenProcessPool:
            if isolated:
                finish(i, _failed(task, "worker process died while exporting (crash or out of memory)"))
            else:
                suspects.append((i, task))
            return False
        except Exception as exc:  # e.g. the item could not be pickled for the worker
            rec = _failed(task, first_line(exc, with_type=True))
        finish(i, rec)
        return True

    def submit(pending: deque[tuple[int, ExportTask]], isolated: bool) -> bool:
        """Submit the next pending task; False (task left pending) if the pool is already broken."""
        assert pool is not None
        i, task = pending[0]
        try:
            fut = pool.submit(run_task, task)
        except BrokenProcessPool:  # a worker died since we last looked
            return False
        pending.popleft()
        in_flight[fut] = (i, task, isolated)
        return True

    try:
        pool = new_pool()
        while queue or suspects or in_flight:
            broken = False
            if suspects:
                if not in_flight:
                    broken = not submit(suspects, True)
            else:
                while queue and len(in_flight) < jobs and not broken:
                    broken = not submit(queue, False)
            if not broken:
                done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for fut in done:
                    broken |= not collect(fut, *in_flight.pop(fut))
            if broken:
                # The pool's manager thread fails every other future of a broken pool and then
                # terminates its workers; let it finish (no cancel_futures: cancelling under its
                # feet can kill that thread and orphan a worker), then start a fresh pool.
                wait(list(in_flight))
                for fut in list(in_flight):
                    collect(fut, *in_flight.pop(fut))
                pool.shutdown(wait=True)
                pool = new_pool()
    except BaseException:
        if pool is not None:
            _kill_pool(pool)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop our own workers now (on Ctrl-C). Temp files they leave are removed on the next run;
    finished artifacts are already in the manifest."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():  # SIGTERM not acted on in time
            p.kill()
            p.join(timeout=5)
    # With its workers gone the manager thread marks the pool broken and exits; at most `jobs`
    # tasks were submitted, so there is nothing to cancel.
    pool.shutdown(wait=True)


def export_one(
    item: Exportable,
    fmt: str = "onnx",
    out_dir: str | Path | None = None,
    precision: str | None = None,
    deployment_target: str = DEFAULT_DEPLOYMENT_TARGET,
    *,
    seed: int = DEFAULT_SEED,
    force: bool = False,
    quantization: QuantRecipe | dict[str, Any] | None = None,
) -> ArtifactRecord:
    """Export (or find in the cache) one item in one format, in this process.

    Returns the record whatever happened; `record.raise_for_status()` turns a failure into a
    LatbenchError.
    """
    report = export_items([item], (fmt,), out_dir, precision, deployment_target, jobs=1, progress=False,
                          seed=seed, force=force, quantization=quantization)
    return report[(item.key, parse_formats(fmt)[0])]


def find_artifact(
    item: Exportable,
    fmt: str = "onnx",
    out_dir: str | Path | None = None,
    precision: str | None = None,
    deployment_target: str = DEFAULT_DEPLOYMENT_TARGET,
    *,
    seed: int = DEFAULT_SEED,
    quantization: QuantRecipe | dict[str, Any] | None = None,
) -> ArtifactRecord | None:
    """The trusted cached artifact for `item`, or None; never exports."""
    fmt = parse_formats(fmt)[0]
    out = Path(out_dir if out_dir is not None else default_cache_dir()).expanduser()
    task = plan_tasks([item], (fmt,), out, check_precision(precision),
                      check_deployment_target(deployment_target), DEFAULT_EXPORTER, ONNX_OPSET, seed, quantization)[0]
    manifest = Manifest(out)
    rec = manifest.load().get(task.content_hash)
    if not manifest.trusted(rec):
        return None
    assert rec is not None
    rec.status = "cached"
    rec.name = task.name
    return rec
