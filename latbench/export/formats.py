"""One object per artifact format: what the export pipeline needs to know about ONNX, Core ML and
TFLite (the exporter it records, whether it takes a deployment target or an opset, how an item is
exported, what a worker process loads once, what must be installed), so the pipeline itself never
branches on the format. The converters stay in their modules (onnx.py, coreml.py, tflite.py),
imported only when a format is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from latbench.export.common import DEFAULT_DEPLOYMENT_TARGET, DEFAULT_PRECISION, ONNX_OPSET
from latbench.export.coreml_quant import METHOD as COREML_METHOD
from latbench.export.quantize import QUANTIZE_STATIC, QuantRecipe
from latbench.export.tflite_quant import METHOD as LITERT_METHOD


class ExportFormat:
    name: ClassVar[str]
    #: The "method" its int8 recipes record (what tells a table's format from its recipe).
    recipe_method: ClassVar[str]
    takes_deployment_target: ClassVar[bool] = False
    takes_opset: ClassVar[bool] = False

    @property
    def default_precision(self) -> str:
        return DEFAULT_PRECISION[self.name]

    def exporter(self, onnx_exporter: str) -> str:
        """The exporter recorded (and hashed) with an artifact; only ONNX offers a choice."""
        raise NotImplementedError

    def export(self, item: Any, final: Path, rec: Any, *, precision: str, exporter: str, opset: int | None,
               deployment_target: str | None, seed: int, quantization: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def deployment_target(self, target: str, precision: str) -> str:
        """The deployment target an artifact of `precision` is made for (default: as asked)."""
        return target

    def quant_recipe(self, recipe: QuantRecipe) -> dict[str, Any]:
        """The int8 recipe recorded in an artifact's manifest entry and hashed with it (default:
        onnxruntime's static QDQ recipe as it is)."""
        return recipe.to_dict()

    def check_available(self) -> None:
        """A one-line error naming what to install, before any work starts (default: always there)."""

    def warm_worker(self) -> None:
        """Imports a worker process pays once rather than per artifact (default: none)."""


class OnnxFormat(ExportFormat):
    name = "onnx"
    recipe_method = QUANTIZE_STATIC
    takes_opset = True

    def exporter(self, onnx_exporter: str) -> str:
        return onnx_exporter

    def export(self, item: Any, final: Path, rec: Any, *, precision: str, exporter: str, opset: int | None,
               deployment_target: str | None, seed: int, quantization: dict[str, Any] | None = None) -> None:
        from latbench.export.onnx import export_onnx

        export_onnx(item, final, rec, precision=precision, exporter=exporter, opset=opset or ONNX_OPSET, seed=seed,
                    quantization=quantization)


class CoreMLFormat(ExportFormat):
    name = "coreml"
    recipe_method = COREML_METHOD
    takes_deployment_target = True

    def exporter(self, onnx_exporter: str) -> str:
        return "torch.export+coremltools"

    def export(self, item: Any, final: Path, rec: Any, *, precision: str, exporter: str, opset: int | None,
               deployment_target: str | None, seed: int, quantization: dict[str, Any] | None = None) -> None:
        from latbench.export.coreml import export_coreml

        export_coreml(item, final, rec, precision=precision,
                      deployment_target=deployment_target or DEFAULT_DEPLOYMENT_TARGET, seed=seed,
                      quantization=quantization)

    def quant_recipe(self, recipe: QuantRecipe) -> dict[str, Any]:
        from latbench.export.coreml_quant import coreml_recipe

        return coreml_recipe(recipe)

    def deployment_target(self, target: str, precision: str) -> str:
        if precision != "int8":
            return target
        from latbench.export.coreml_quant import min_target

        return min_target(target)

    def warm_worker(self) -> None:
        from latbench.export.coreml import import_coremltools

        import_coremltools()  # pay the ~4 s import once per worker, not per artifact


class TFLiteFormat(ExportFormat):
    name = "tflite"
    recipe_method = LITERT_METHOD

    def exporter(self, onnx_exporter: str) -> str:
        from latbench.export.tflite import EXPORTER

        return EXPORTER

    def export(self, item: Any, final: Path, rec: Any, *, precision: str, exporter: str, opset: int | None,
               deployment_target: str | None, seed: int, quantization: dict[str, Any] | None = None) -> None:
        from latbench.export.tflite import export_tflite

        export_tflite(item, final, rec, precision=precision, seed=seed, quantization=quantization)

    def quant_recipe(self, recipe: QuantRecipe) -> dict[str, Any]:
        from latbench.export.tflite_quant import litert_recipe

        return litert_recipe(recipe)

    def check_available(self) -> None:
        from latbench.export.tflite import check_available

        check_available()

    def warm_worker(self) -> None:
        from latbench.export.tflite import import_litert

        import_litert()  # jax and transformers come with it: a few seconds, once per worker


#: format name -> its object (the names of latbench.core.formats.FORMATS)
EXPORT_FORMATS: dict[str, ExportFormat] = {f.name: f for f in (OnnxFormat(), CoreMLFormat(), TFLiteFormat())}


def format_of_recipe(recipe: dict[str, Any] | None) -> str | None:
    """The format whose int8 recipe `recipe` (a recorded one, e.g. a table's meta) is, if any."""
    method = (recipe or {}).get("method")
    return next((f.name for f in EXPORT_FORMATS.values() if method and f.recipe_method == method), None)
