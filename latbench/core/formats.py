"""Artifact formats and the file suffixes that name them (the one map every layer uses)."""

from __future__ import annotations

from pathlib import Path

#: format -> suffixes of its artifacts; the first is what latbench writes.
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "onnx": (".onnx",),
    "coreml": (".mlpackage", ".mlmodel", ".mlmodelc"),
    "tflite": (".tflite",),
}
FORMATS = tuple(FORMAT_SUFFIXES)


def format_of(path: str | Path) -> str | None:
    """The format an artifact's file name says it is (None if none does)."""
    suffix = Path(path).suffix.lower()
    return next((fmt for fmt, suffixes in FORMAT_SUFFIXES.items() if suffix in suffixes), None)
