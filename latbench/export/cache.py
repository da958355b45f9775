"""Content-addressed artifact cache: where an artifact lives and whether an existing one can be trusted.

An artifact's path embeds a hash of everything that determines it: the item (key, kind, fields,
input shape), format, precision (with int8, the quantization recipe), Core ML deployment target, exporter and opset, weight seed, the
library versions (torch, onnx, onnxruntime / coremltools / litert-torch, latbench), a digest of the model code
and the export pipeline version. `manifest.json` in the output directory lists every artifact
with its sha256; an artifact is reused only when its manifest entry says it validated, its file
exists and its sha256 still matches. Writers merge into the manifest under a lock, so
concurrent exports into one directory do not drop each other's entries.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import latbench
from latbench.core.fileio import atomic_write_json
from latbench.core.formats import FORMAT_SUFFIXES
from latbench.core.hashing import tree_sha256
from latbench.export.common import (
    PIPELINE_VERSION,
    ArtifactRecord,
    Exportable,
    library_versions,
    safe_name,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
TMP_PREFIX = ".tmp-"


def default_cache_dir() -> Path:
    """$LATBENCH_CACHE, else $XDG_CACHE_HOME/latbench/exports, else ~/.cache/latbench/exports."""
    env = os.environ.get("LATBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "latbench" / "exports"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of the code that defines the exported modules, their weights and the export steps.

    Editing a model, the weight preparation or an exporter must not leave stale artifacts behind
    a cache hit, and the package version alone does not change while developing. The code is
    hashed as its syntax tree without docstrings, so comment and documentation edits keep the cache.
    """
    root = Path(latbench.__file__).parent
    h = hashlib.sha256()
    for f in digest_sources():
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + _code_fingerprint(f) + b"\0")
    return h.hexdigest()[:16]


def digest_sources() -> list[Path]:
    """The source files `code_digest` covers: the models, the block configurations (which module
    with which arguments and input shape an item exports), the architecture constants and the
    exporters. Every one must exist: a file skipped after a move would let its edits hit the cache."""
    root = Path(latbench.__file__).parent
    exporters = [root / "export" / n for n in ("common.py", "onnx.py", "coreml.py", "tflite.py", "quantize.py",
                                                 "tflite_quant.py", "coreml_quant.py")]
    return [*sorted((root / "models").glob("*.py")), *sorted((root / "blocks").glob("*.py")),
            root / "space" / "arch.py", *exporters]


def _code_fingerprint(path: Path) -> bytes:
    source = path.read_bytes()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def item_fields(item: Exportable) -> dict[str, Any]:
    """What rebuilds the item: BlockConfig.fields(), or a Candidate's arch / model name."""
    fields = getattr(item, "fields", None)
    if callable(fields):
        try:
            return dict(fields())
        except Exception:  # a foreign item's fields() is only descriptive
            return {}
    arch = getattr(item, "arch", None)
    if arch is not None and hasattr(arch, "to_dict"):
        # The display name is not part of what gets exported.
        return {"arch": {k: v for k, v in arch.to_dict().items() if k != "name"}}
    model_name = getattr(item, "model_name", None)
    if isinstance(model_name, str):
        return {"model_name": model_name, "resolution": getattr(item, "resolution", None)}
    return {}


def content_descriptor(
    item: Exportable,
    fmt: str,
    precision: str,
    deployment_target: str | None,
    exporter: str,
    opset: int | None,
    seed: int,
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What an artifact's content hash covers. `quantization` (the int8 recipe's to_dict()) is a
    key only when given, so the hashes of fp32/fp16 artifacts are as they were."""
    desc = {
        "pipeline": PIPELINE_VERSION,
        "key": item.key,
        "kind": item.kind,
        "fields": item_fields(item),
        "input_shape": [int(d) for d in item.input_shape],
        "format": fmt,
        "precision": precision,
        "deployment_target": deployment_target if fmt == "coreml" else None,
        "exporter": exporter,
        "opset": opset if fmt == "onnx" else None,
        "seed": seed,
        "versions": library_versions(fmt),
        "code": code_digest(),
    }
    if quantization is not None:
        desc["quantization"] = quantization
    return desc


def content_hash(descriptor: dict[str, Any]) -> str:
    body = json.dumps(descriptor, sort_keys=True, default=str).encode()
    return hashlib.sha256(body).hexdigest()


def artifact_relpath(key: str, fmt: str, precision: str, chash: str) -> str:
    """Readable and content-addressed: onnx/ffn-r224-s1-c32-e4-fp32-<hash>.onnx."""
    return f"{fmt}/{safe_name(key)}-{precision}-{chash[:16]}{FORMAT_SUFFIXES[fmt][0]}"


def remove_stale_temps(out_dir: Path) -> None:
    """Delete temp files/directories left by interrupted exports whose process is gone."""
    import shutil

    for sub in [out_dir, *(out_dir / fmt for fmt in FORMAT_SUFFIXES)]:
        if not sub.is_dir():
            continue
        for p in sub.glob(f"{TMP_PREFIX}*"):
            pid = _tmp_pid(p.name)
            if pid is None or pid == os.getpid() or _pid_alive(pid):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def tmp_path_for(final: Path) -> Path:
    """A temp path in the artifact's own directory (same file system: the rename is atomic)."""
    return final.parent / f"{TMP_PREFIX}{os.getpid()}-{final.name}"


def _tmp_pid(name: str) -> int | None:
    rest = name[len(TMP_PREFIX):]
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def place_artifact(tmp: Path, final: Path) -> None:
    """Move a finished artifact into place atomically; an old one at `final` is replaced."""
    import shutil

    if tmp.is_dir():
        if final.exists():
            # A directory cannot be replaced in one rename: move the old one aside first, so the
            # final path only ever holds a complete package.
            trash = final.parent / f"{TMP_PREFIX}{os.getpid()}-old-{final.name}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    else:
        os.replace(tmp, final)


class Manifest:
    """manifest.json of an output directory: artifact records keyed by content hash."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME

    def load(self) -> dict[str, ArtifactRecord]:
        """Records by content hash, with absolute paths. An unreadable manifest reads as empty
        (its artifacts are then re-exported, never trusted blindly)."""
        try:
            data = json.loads(self.path.read_text())
            entries = data.get("artifacts", []) if isinstance(data, dict) else []
        except (OSError, ValueError):
            return {}
        out: dict[str, ArtifactRecord] = {}
        for e in entries:
            if not isinstance(e, dict) or not e.get("content_hash"):
                continue
            try:
                rec = ArtifactRecord.from_dict(e)
            except TypeError:
                continue
            if rec.path:
                rec.path = str(self.out_dir / rec.path)
            out[rec.content_hash] = rec
        return out

    def trusted(self, rec: ArtifactRecord | None) -> bool:
        if rec is None or rec.status == "failed" or not rec.path or not rec.sha256:
            return False
        p = Path(rec.path)
        return p.exists() and tree_sha256(p) == rec.sha256

    def update(self, records: Iterable[ArtifactRecord]) -> None:
        """Merge records into the manifest on disk (lock, re-read, replace atomically)."""
        records = list(records)
        if not records:
            return
        with self._locked():
            current = self.load()
            for rec in records:
                current[rec.content_hash] = rec
            entries = []
            for rec in sorted(current.values(), key=lambda r: (r.key, r.format, r.precision, r.content_hash)):
                d = rec.to_dict()
                if rec.path:
                    p = Path(rec.path)
                    d["path"] = p.relative_to(self.out_dir).as_posix() if p.is_relative_to(self.out_dir) else str(p)
                if d["status"] == "cached":
                    d["status"] = "exported"  # on disk a record says how it was made, not how it was found
                entries.append(d)
            atomic_write_json(
                self.path,
                {
                    "schema": MANIFEST_SCHEMA,
                    "generator": f"latbench {latbench.__version__}",
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "artifacts": entries,
                },
            )
            # The atomic write goes through mkstemp (mode 0600); a shared cache must stay readable.
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o644)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; single writer assumed
            yield
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / ".manifest.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
