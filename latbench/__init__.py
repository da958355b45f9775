"""latbench: measured on-device latency for mobile vision architectures.

The public API (see latbench.api and the README's "Python API"):

    load_table, estimate, estimate_many, FastEstimator, mes, mes_report, profile, build_table,
    build_tables, adapt_table, upgrade_table, validate_table, check_table, repair_table, diff_tables, export_artifacts, run_search,
    open_device, Arch, SearchSpace, LatencyTable, Estimate, and the error types
    LatbenchError, UsageError, DeviceError, DeviceLost, ExportError.

Names are imported on first use, so `import latbench` stays light (no torch, no onnx).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that owns it
_EXPORTS = {
    **{name: "latbench.api" for name in ("load_table", "estimate", "estimate_many", "mes", "profile", "build_table",
                                          "validate_table", "check_table", "open_device", "export_artifacts",
                                          "run_search", "mes_report", "diff_tables", "repair_table",
                                          "build_tables", "probe_device", "list_devices", "farm_devices",
                                          "serve_agent", "adapt_table", "upgrade_table")},
    "FastEstimator": "latbench.estimation.fast",
    "Estimate": "latbench.estimation.estimator",
    "LatencyTable": "latbench.tables.table",
    "Arch": "latbench.space",
    "SearchSpace": "latbench.space",
    **{name: "latbench.core.errors" for name in ("LatbenchError", "UsageError", "DeviceError", "DeviceLost",
                                                  "ExportError")},
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'latbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
