"""Every artifact format is one object the pipeline asks, never a branch on its name."""

from __future__ import annotations

import inspect

from latbench.core.formats import FORMATS
from latbench.export import runner
from latbench.export.formats import EXPORT_FORMATS


def test_every_format_has_one_export_object():
    assert set(EXPORT_FORMATS) == set(FORMATS)
    assert [f for f, obj in EXPORT_FORMATS.items() if obj.takes_deployment_target] == ["coreml"]
    assert [f for f, obj in EXPORT_FORMATS.items() if obj.takes_opset] == ["onnx"]
    assert EXPORT_FORMATS["onnx"].exporter("dynamo") == "dynamo"  # only ONNX offers a choice of exporter
    assert EXPORT_FORMATS["coreml"].exporter("dynamo") != "dynamo"


def test_the_pipeline_does_not_branch_on_format_names():
    source = inspect.getsource(runner)
    for name in FORMATS:
        assert f'== "{name}"' not in source and f'"{name}" in f' not in source
