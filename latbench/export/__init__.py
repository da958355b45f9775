"""Export blocks and models to ONNX, Core ML and TFLite, content-addressed and validated.

    from latbench.export import export_items, export_one
    report = export_items(space_blocks(space, 224), formats=("onnx", "coreml"), out_dir="exports", jobs=2)
    for rec in report: print(rec.key, rec.format, rec.status, rec.path)

Modules: `common` (records, deterministic weights, tolerances), `cache` (content hashes, the
manifest), `onnx`, `coreml` and `tflite` (one exporter each), `inspect` (what an artifact file takes
as input), `runner` (many items on worker processes).
"""

from __future__ import annotations

from latbench.export.cache import MANIFEST_NAME, Manifest, default_cache_dir
from latbench.export.common import (
    COREML_TARGETS,
    DEFAULT_DEPLOYMENT_TARGET,
    DEFAULT_PRECISION,
    FORMATS,
    PARITY_TOLERANCE,
    PRECISIONS,
    ArtifactRecord,
    Exportable,
    check_deployment_target,
    parse_formats,
    prepare_for_export,
    prepared_module,
    seeded_input,
)
from latbench.export.runner import ExportReport, default_jobs, export_items, export_one, find_artifact

__all__ = [
    "COREML_TARGETS",
    "DEFAULT_DEPLOYMENT_TARGET",
    "DEFAULT_PRECISION",
    "FORMATS",
    "MANIFEST_NAME",
    "PARITY_TOLERANCE",
    "PRECISIONS",
    "ArtifactRecord",
    "ExportReport",
    "Exportable",
    "Manifest",
    "check_deployment_target",
    "default_cache_dir",
    "default_jobs",
    "export_items",
    "export_one",
    "find_artifact",
    "parse_formats",
    "prepare_for_export",
    "prepared_module",
    "seeded_input",
]
