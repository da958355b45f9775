"""The content-addressed cache: skip unchanged work, never trust a damaged or half-written artifact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from latbench.blocks.configs import EmbedConfig, FFNConfig, HeadConfig, StemConfig
from latbench.core.hashing import tree_sha256
from latbench.export import (
    MANIFEST_NAME,
    ArtifactRecord,
    Manifest,
    export_items,
    export_one,
    find_artifact,
)
from latbench.export import cache as cache_mod
from latbench.export import common as common_mod
from latbench.export.cache import content_descriptor, content_hash

ITEMS = [StemConfig(224, 32), FFNConfig(224, 1, 32, 2), EmbedConfig(224, 1, 32, 48), HeadConfig(224, 176)]


def _export(out: Path, items=ITEMS, **kw):
    return export_items(items, kw.pop("formats", ("onnx",)), out, jobs=1, progress=False, **kw)


def _manifest(out: Path) -> list[dict]:
    return json.loads((out / MANIFEST_NAME).read_text())["artifacts"]


def test_second_run_exports_nothing_and_is_fast(tmp_path: Path) -> None:
    first = _export(tmp_path)
    assert [r.status for r in first] == ["exported"] * 4
    mtimes = {r.path: os.stat(r.path).st_mtime_ns for r in first}
    second = _export(tmp_path)
    assert [r.status for r in second] == ["cached"] * 4
    for a, b in zip(first, second):
        assert (a.path, a.sha256, a.content_hash, a.validation) == (b.path, b.sha256, b.content_hash, b.validation)
    assert {r.path: os.stat(r.path).st_mtime_ns for r in second} == mtimes  # nothing rewritten
    entries = _manifest(tmp_path)
    assert len(entries) == 4 and all(e["status"] == "exported" for e in entries)
    e = entries[0]
    for name in ("key", "format", "path", "sha256", "size", "input_names", "input_shapes", "output_names",
                 "output_shapes", "export_seconds", "validation", "versions", "content_hash"):
        assert name in e, name
    assert not Path(e["path"]).is_absolute()  # the directory can be moved
    assert {"torch", "onnx", "onnxruntime", "latbench"} <= set(e["versions"])


def test_path_embeds_the_content_hash_of_everything_that_determines_it(tmp_path: Path) -> None:
    item = ITEMS[1]
    base = content_descriptor(item, "onnx", "fp32", None, "torchscript", 17, 0)
    h = content_hash(base)
    assert content_hash(dict(base)) == h
    for change in ({"precision": "fp16"}, {"opset": 18}, {"seed": 1}, {"exporter": "dynamo"},
                   {"versions": {**base["versions"], "torch": "9.9"}}, {"code": "0" * 16}):
        assert content_hash({**base, **change}) != h, change
    target_a = content_hash(content_descriptor(item, "coreml", "fp16", "iOS16", "x", None, 0))
    target_b = content_hash(content_descriptor(item, "coreml", "fp16", "iOS17", "x", None, 0))
    assert target_a != target_b
    rec = export_one(item, "onnx", tmp_path)
    assert rec.content_hash == h and h[:16] in Path(rec.path).name


def test_precision_change_exports_a_new_artifact_and_keeps_the_old(tmp_path: Path) -> None:
    fp32 = export_one(ITEMS[0], "onnx", tmp_path)
    fp16 = export_one(ITEMS[0], "onnx", tmp_path, precision="fp16")
    assert fp16.status == "exported" and fp16.path != fp32.path
    assert export_one(ITEMS[0], "onnx", tmp_path).status == "cached"
    assert len(_manifest(tmp_path)) == 2


def test_library_version_change_invalidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export_one(ITEMS[0], "onnx", tmp_path)
    real = common_mod._dist_version
    monkeypatch.setattr(common_mod, "_dist_version", lambda n: "0.0.1" if n == "onnx" else real(n))
    common_mod._library_versions.cache_clear()
    try:
        rec = export_one(ITEMS[0], "onnx", tmp_path)
    finally:
        monkeypatch.undo()
        common_mod._library_versions.cache_clear()
    assert rec.status == "exported" and rec.versions["onnx"] == "0.0.1"
    assert export_one(ITEMS[0], "onnx", tmp_path).status == "cached"  # the real versions' artifact is intact


def test_damaged_or_missing_artifacts_are_reexported(tmp_path: Path) -> None:
    first = _export(tmp_path)
    Path(first[(ITEMS[0].key, "onnx")].path).write_bytes(b"truncated")  # sha256 no longer matches
    Path(first[(ITEMS[1].key, "onnx")].path).unlink()
    second = _export(tmp_path)
    assert [r.status for r in second] == ["exported", "exported", "cached", "cached"]
    for r in second:
        assert tree_sha256(r.path) == r.sha256


def test_unreadable_manifest_is_never_trusted(tmp_path: Path) -> None:
    _export(tmp_path, ITEMS[:2])
    (tmp_path / MANIFEST_NAME).write_text("{ not json")
    again = _export(tmp_path, ITEMS[:2])
    assert [r.status for r in again] == ["exported", "exported"]
    assert len(_manifest(tmp_path)) == 2


def test_manifest_updates_merge_concurrent_writers(tmp_path: Path) -> None:
    a = export_one(ITEMS[0], "onnx", tmp_path)
    # Another process (a profiler sharing the cache) records an artifact meanwhile; our next
    # update re-reads the manifest under the lock, so that entry survives.
    other = ArtifactRecord(key="other", kind="ffn", format="onnx", precision="fp32", status="exported",
                           path=str(tmp_path / "onnx" / "other.onnx"), sha256="0" * 64, content_hash="f" * 64)
    Manifest(tmp_path).update([other])
    b = export_one(ITEMS[1], "onnx", tmp_path)
    assert {e["key"] for e in _manifest(tmp_path)} == {a.key, b.key, "other"}
    loaded = Manifest(tmp_path).load()
    assert loaded["f" * 64].path == str(tmp_path / "onnx" / "other.onnx")
    assert not Manifest(tmp_path).trusted(loaded["f" * 64])  # its file does not exist


def test_interrupted_run_keeps_finished_work_and_leaves_no_partial_artifact(tmp_path: Path) -> None:
    seen: list[str] = []

    def stop_after_two(rec) -> None:
        seen.append(rec.key)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _export(tmp_path, on_result=stop_after_two)
    assert {e["key"] for e in _manifest(tmp_path)} == set(seen)
    assert not list(tmp_path.rglob(".tmp-*"))
    resumed = _export(tmp_path)
    assert [r.status for r in resumed] == ["cached", "cached", "exported", "exported"]


def test_leftover_temp_files_of_dead_processes_are_removed_and_never_trusted(tmp_path: Path) -> None:
    rec = export_one(ITEMS[0], "onnx", tmp_path)
    final = Path(rec.path)
    # What an export killed mid-write leaves: a temp file next to the artifact, never the artifact.
    dead_pid = 2**22 + 12345
    stale = final.parent / f".tmp-{dead_pid}-{final.name}"
    stale.write_bytes(b"half")
    stale_pkg = final.parent / f".tmp-{dead_pid}-x.mlpackage"
    stale_pkg.mkdir()
    (stale_pkg / "Manifest.json").write_text("{}")
    live = final.parent / f".tmp-{os.getpid()}-y.onnx"
    live.write_bytes(b"mine")
    assert export_one(ITEMS[0], "onnx", tmp_path).status == "cached"
    assert not stale.exists() and not stale_pkg.exists()
    assert live.exists()  # a running process's temp file is left alone


def test_place_artifact_replaces_a_package_directory_whole(tmp_path: Path) -> None:
    final = tmp_path / "a.mlpackage"
    final.mkdir()
    (final / "old").write_text("old")
    tmp = cache_mod.tmp_path_for(final)
    tmp.mkdir()
    (tmp / "new").write_text("new")
    cache_mod.place_artifact(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert not tmp.exists() and not list(tmp_path.glob(".tmp-*"))


def test_find_artifact_and_force(tmp_path: Path) -> None:
    assert find_artifact(ITEMS[3], "onnx", tmp_path) is None
    rec = export_one(ITEMS[3], "onnx", tmp_path)
    found = find_artifact(ITEMS[3], "onnx", tmp_path)
    assert found is not None and found.status == "cached" and found.path == rec.path
    assert export_items([ITEMS[3]], "onnx", tmp_path, jobs=1, progress=False, force=True)[
        (ITEMS[3].key, "onnx")].status == "exported"


def test_default_cache_dir_honours_latbench_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATBENCH_CACHE", str(tmp_path / "cache"))
    assert cache_mod.default_cache_dir() == tmp_path / "cache"
    rec = export_one(ITEMS[0], "onnx")
    assert Path(rec.path).is_relative_to(tmp_path / "cache")
    monkeypatch.delenv("LATBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.default_cache_dir() == tmp_path / "xdg" / "latbench" / "exports"


def test_code_digest_ignores_docstrings_and_comments(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # comment\n')
    b.write_text('"""Other doc."""\n\ndef f(x):\n    # another comment\n    return x + 1\n')
    c.write_text('def f(x):\n    return x + 2\n')
    fp = cache_mod._code_fingerprint
    assert fp(a) == fp(b) != fp(c)


def test_code_digest_covers_the_block_configurations_and_every_source_exists(monkeypatch) -> None:
    import latbench

    root = Path(latbench.__file__).parent
    sources = cache_mod.digest_sources()
    names = {f.relative_to(root).as_posix() for f in sources}
    assert {"blocks/configs.py", "blocks/candidates.py", "space/arch.py", "models/efficientformerv2.py",
            "export/onnx.py"} <= names
    assert all(f.is_file() for f in sources)
    # An edit to what a block configuration builds changes the digest (cached artifacts go stale).
    before = cache_mod.code_digest.__wrapped__()
    real = cache_mod._code_fingerprint
    monkeypatch.setattr(cache_mod, "_code_fingerprint",
                        lambda f: real(f) + (b"edited" if f.name == "configs.py" else b""))
    assert cache_mod.code_digest.__wrapped__() != before
