"""MobileNetV2 reference model: exact size, forward shape, ONNX export parity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from latbench.models.mobilenetv2 import MobileNetV2, make_divisible, mobilenetv2_100


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_imagenet_reference() -> None:
    assert _n_params(mobilenetv2_100()) == 3_504_872


def test_num_classes_changes_only_the_classifier() -> None:
    # 1280 -> 10 instead of 1280 -> 1000: weights and biases of 990 outputs disappear.
    assert _n_params(mobilenetv2_100(num_classes=10)) == 3_504_872 - 990 * 1281


def test_forward_shape_at_224() -> None:
    model = mobilenetv2_100().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_make_divisible_rounds_to_multiples_of_8() -> None:
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(16 * 0.35) == 8  # never below the divisor
    assert make_divisible(96 * 0.35) == 32  # 33.6 -> 32 (within 10%)
    assert make_divisible(20) == 24  # round half up; 16 would lose more than 10%


@pytest.mark.parametrize("width", [0.5, 0.75, 1.4])
def test_width_multiplier_keeps_channels_multiple_of_8(width: float) -> None:
    model = MobileNetV2(width_mult=width)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 3
    for conv in convs:
        assert conv.out_channels % 8 == 0, conv
    # The head never shrinks below 1280 (paper), but grows with width > 1.
    assert model.num_features == (1280 if width <= 1.0 else make_divisible(1280 * width))


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_onnx_export_matches_torch(tmp_path) -> None:
    torch.manual_seed(0)
    model = mobilenetv2_100().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(x).numpy()
    path = tmp_path / "mobilenetv2_100.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert out.shape == (1, 1000)
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(out - ref).max()) <= tol


def test_the_catalogue_knows_size_and_cost_without_building():
    from latbench.blocks.candidates import Candidate
    from latbench.blocks.configs import ModelConfig
    from latbench.models import CATALOGUE, create_model, list_models

    for name, info in CATALOGUE.items():
        model = create_model(name, resolution=info.default_resolution)  # every catalogue name builds
        if info.params is None:
            continue
        assert sum(p.numel() for p in model.parameters()) == info.params
        assert ModelConfig(info.default_resolution, name).macs() == info.macs  # counted by torch
        assert Candidate(name, info.default_resolution, model_name=name).macs() == info.macs
    assert list_models() == sorted(CATALOGUE)
