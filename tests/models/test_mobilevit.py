"""MobileViT reference models: exact sizes, resolutions, patch (un)folding, ONNX and Core ML export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from latbench.core.errors import UsageError
from latbench.models.mobilevit import (
    MobileViTBlock,
    _bilinear_matrix,
    mobilevit_s,
    mobilevit_xs,
    mobilevit_xxs,
)

EXPECTED_PARAMS = [
    (mobilevit_xxs, 1_272_024),
    (mobilevit_xs, 2_317_848),
    (mobilevit_s, 5_578_632),
]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("builder", "expected"), EXPECTED_PARAMS, ids=lambda v: getattr(v, "__name__", ""))
def test_parameter_count_matches_reference(builder, expected: int) -> None:
    assert _n_params(builder()) == expected


@pytest.mark.parametrize("resolution", [256, 288])
def test_forward_shape_at_resolution(resolution: int) -> None:
    model = mobilevit_xxs(resolution=resolution).eval()
    # Resolution changes the static reshape sizes, never the weights.
    assert _n_params(model) == 1_272_024
    with torch.no_grad():
        out = model(torch.randn(1, 3, resolution, resolution))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("resolution", [250, 240, 0, -32])
def test_resolution_not_multiple_of_32_is_usage_error(resolution: int) -> None:
    with pytest.raises(UsageError) as info:
        mobilevit_xxs(resolution=resolution)
    assert "multiple of 32" in str(info.value)
    assert "\n" not in str(info.value)


def test_unfold_fold_roundtrip_and_token_layout() -> None:
    block = MobileViTBlock(channels=8, dim=16, depth=1, feature_size=8)
    y = torch.randn(3, 16, 8, 8)
    tokens = block._unfold(y)
    # (B * pixels-per-patch, patches, dim) = (3 * 4, 16, 16)
    assert tokens.shape == (12, 16, 16)
    assert torch.equal(block._fold(tokens), y)
    # Sequence (b, ph, pw) holds pixel (ph, pw) of every patch; patch (i, j) is token i * 4 + j.
    per_pixel = tokens.reshape(3, 2, 2, 16, 16)
    assert torch.equal(per_pixel[:, 0, 1, 2 * 4 + 3], y[:, :, 2 * 2 + 0, 3 * 2 + 1])


@pytest.mark.parametrize(("src", "dst"), [(9, 10), (10, 9), (7, 8)])
def test_resize_matrix_equals_bilinear_interpolate(src: int, dst: int) -> None:
    # Odd feature maps (9x9 at 288 input) are resized to the patch grid by constant matrices.
    x = torch.randn(2, 4, src, src)
    m = _bilinear_matrix(src, dst)
    expected = F.interpolate(x, size=(dst, dst), mode="bilinear", align_corners=False)
    torch.testing.assert_close(m @ x @ m.T, expected, rtol=0, atol=1e-5)


def test_resize_only_when_feature_map_is_odd() -> None:
    blocks = [m for m in mobilevit_xxs(resolution=288).modules() if isinstance(m, MobileViTBlock)]
    # 288 input: layer3/4/5 see 36, 18, 9 -> only the 9x9 map is resized (to 10x10).
    assert [b.resize_up is not None for b in blocks] == [False, False, True]
    assert blocks[-1].resize_up.shape == (10, 9)
    # Derived buffers stay out of the state dict, so checkpoints are resolution independent.
    assert not any("resize" in k for k in mobilevit_xxs(resolution=288).state_dict())


@pytest.mark.parametrize(
    ("builder", "resolution"),
    [(mobilevit_xxs, 256), (mobilevit_xs, 256), (mobilevit_s, 256), (mobilevit_xxs, 288)],
    ids=["xxs-256", "xs-256", "s-256", "xxs-288"],
)
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_onnx_export_matches_torch(tmp_path, builder, resolution: int) -> None:
    torch.manual_seed(0)
    model = builder(resolution=resolution).eval()
    x = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        ref = model(x).numpy()
    path = tmp_path / f"{builder.__name__}_{resolution}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    # Static graph: no runtime shape computation, no im2col-style ops.
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Shape", "Col2Im", "Im2Col"}, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert out.shape == (1, 1000)
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(out - ref).max()) <= tol


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:coremltools")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_coreml_conversion_via_torch_export() -> None:
    ct = pytest.importorskip("coremltools")
    model = mobilevit_xxs().eval()
    x = torch.randn(1, 3, 256, 256)
    program = torch.export.export(model, (x,)).run_decompositions({})
    mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
    assert isinstance(mlmodel, ct.models.MLModel)
    # Conversion only: Core ML prediction is unavailable on Linux.
    spec = mlmodel.get_spec()
    assert len(spec.description.input) == 1
    assert len(spec.description.output) == 1
