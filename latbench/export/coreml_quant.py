"""int8 Core ML (W8A8): int8 weights and activations quantized in PyTorch before conversion.

coremltools offers two ways to an ML Program with quantized activations. Its Core ML-side one,
`coremltools.optimize.coreml.linear_quantize_activations`, calibrates by running the model
(`MLModel.predict` through its model debugger), which only macOS can do. Its PyTorch-side one
runs anywhere, so it is the one used: `coremltools.optimize.torch.quantization.LinearQuantizer`
(torch.ao FX: FakeQuantize modules with min/max observers after every weight and activation)
is prepared on the block, its observers see the recipe's calibration batches (the seeded,
recorded ones of latbench.export.quantize, shared with the ONNX and LiteRT recipes) with no
training step at all, i.e. post-training quantization, and `finalize` gives a reference-quantized
FX module (quantize/dequantize around float ops) that coremltools converts to `quantize` /
`dequantize` ops on int8 activations and `constexpr_affine_dequantize` on int8 weights. (Its
`CoreMLQuantizer`, the torch.export route, needs `torch.ao.quantization.quantizer`, which torch
2.13 no longer has.)

Conversion goes through `torch.jit.trace`: torch.export cannot trace the reference-quantized
ops (no fake kernel for quantize_per_channel). The attention blocks read their batch size from
`x.shape[0]`, which the trace turns into an `aten::Int` that coremltools 9 fails to convert;
export is static batch 1 anyway, so `static_shapes` replaces every shape lookup in the FX graph
by the integer it had on the example input. Activation quantization needs an iOS17-level target
(`min_target`: a lower requested target is raised within its platform, and the manifest records
the one used).

Parity: macOS runs the package and compares it with the fp32 PyTorch output by cosine and
relative error (latbench.export.quantize). Elsewhere the reference-quantized PyTorch module
(what was converted, quantization included) is compared the same way, and the converted program
must hold int8 quantize ops and int8 weights; the validation record says which was done. The
thresholds are the ONNX ones (latbench.export.quantize.INT8_PARITY). Measured off macOS (the
quantized PyTorch module, default recipe) on 44 blocks of the default space (every stem and head,
8 of each other kind at random, 6 empty models), cosine / relative error: stem 0.99974-0.99975 /
0.022-0.023, ffn 0.99971-0.99978 / 0.021-0.024, mhsa 0.99944-0.99972 / 0.024-0.034, embed
0.99983-0.99987 / 0.016-0.019, attndown 0.99952-0.99957 / 0.029-0.031, head 0.99979-0.99981 /
0.019-0.021, empty 0.99995-0.99996 / 0.009-0.010; whole models EfficientFormerV2-S0 0.9926 /
0.12, MobileNetV2-1.0 0.99992 / 0.013. What Core ML's own kernels add is measured on macOS only.
"""

from __future__ import annotations

import operator
from typing import Any

from latbench.core.errors import UsageError
from latbench.export.quantize import QuantRecipe, calibration_batches, minmax_recipe

METHOD = "coremltools.optimize.torch LinearQuantizer (post-training: min/max observers, no training step)"
#: The first deployment target of each platform whose ML Programs take quantized activations.
MIN_TARGETS = {"iOS": 17, "macOS": 14, "watchOS": 10, "tvOS": 17}


def coreml_recipe(recipe: QuantRecipe) -> dict[str, Any]:
    """The recorded (and hashed) recipe of a W8A8 .mlpackage made with `recipe`'s calibration."""
    from importlib import metadata

    return {**minmax_recipe(recipe, "Core ML", METHOD, coremltools_version=metadata.version("coremltools")),
            "activation_type": "uint8", "quantization_scheme": "affine"}  # the quantizer's affine quint8


def min_target(target: str) -> str:
    """`target` raised to the first of its platform that takes quantized activations (iOS16 -> iOS17)."""
    platform = target.rstrip("0123456789")
    number = int(target[len(platform):] or 0)
    first = MIN_TARGETS.get(platform)
    if first is None:
        raise UsageError(f"int8 Core ML has no deployment target for {target!r}")
    return target if number >= first else f"{platform}{first}"


def w8a8_module(module: Any, x: Any, recipe: QuantRecipe) -> Any:
    """The reference-quantized FX module of `module` (eval mode) calibrated on the recipe's batches,
    with static shapes (see the module docstring)."""
    import torch
    from coremltools.optimize.torch.quantization import LinearQuantizer, LinearQuantizerConfig

    config = LinearQuantizerConfig.from_dict({"global_config": {
        "quantization_scheme": "affine", "activation_dtype": "quint8", "weight_dtype": "qint8",
        "weight_per_channel": recipe.per_channel, "activation_observer": "min_max", "weight_observer": "min_max",
        # Step 0 turns the observers and fake quantization on and freezes BatchNorm statistics;
        # observers are never turned off, so every calibration batch counts.
        "milestones": [0, 0, 2**31 - 1, 0],
    }})
    quantizer = LinearQuantizer(inference_only(module), config)
    prepared = quantizer.prepare(example_inputs=(x,))
    quantizer.step()
    prepared.eval()
    with torch.no_grad():
        for batch in calibration_batches("input", tuple(x.shape), recipe):
            prepared(torch.from_numpy(batch["input"]))
    final = quantizer.finalize(inplace=False).eval()
    static_shapes(final, x)
    return final


def inference_only(module: Any) -> Any:
    """`module` wrapped so that it stays in eval mode when the quantizer calls train(): FX traces
    Python branches on `self.training` once, and the classifier head returns its two heads apart
    while training. BatchNorm statistics stay the model's (they are frozen at step 0 anyway)."""
    import torch

    class InferenceOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def train(self, mode: bool = True) -> Any:
            super().train(mode)
            self.inner.eval()
            return self

        def forward(self, x: Any) -> Any:
            return self.inner(x)

    return InferenceOnly(module)


def static_shapes(gm: Any, x: Any) -> int:
    """Replace each `getitem` of an FX graph whose value on `x` is an int (a dimension read off a
    shape) by that int; returns how many were replaced."""
    import torch

    values: dict[Any, Any] = {}
    interpreter = torch.fx.Interpreter(gm)
    run_node = interpreter.run_node

    def recording(node: Any) -> Any:
        values[node] = result = run_node(node)
        return result

    interpreter.run_node = recording  # type: ignore[method-assign]
    with torch.no_grad():
        interpreter.run(x)
    replaced = 0
    for node in list(gm.graph.nodes):
        value = values.get(node)
        if node.op == "call_function" and node.target is operator.getitem and type(value) is int:
            node.replace_all_uses_with(value)
            gm.graph.erase_node(node)
            replaced += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return replaced
