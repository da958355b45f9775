"""Deterministic, realistic weights for export: prepare_for_export and the seeded inputs."""

from __future__ import annotations

import torch
import torch.nn as nn

from latbench.blocks.configs import AttnConfig, FFNConfig, HeadConfig, StemConfig
from latbench.export import prepare_for_export, prepared_module, seeded_input
from latbench.export.common import parity_result, parse_formats

FFN = FFNConfig(224, 3, 96, 4)
MHSA = AttnConfig(224, 3, 96)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_prepared_module_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = _state(prepared_module(MHSA, seed=0))
    after = torch.rand(3)
    b = _state(prepared_module(MHSA, seed=0))
    c = _state(prepared_module(MHSA, seed=1))
    assert torch.equal(before, after)  # the caller's RNG stream is untouched
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_layer_scales_and_batchnorm_are_realistic() -> None:
    module = prepared_module(FFN)
    assert not module.training
    ls = module.layer_scale_2
    assert ls.min() >= 0.2 and ls.max() <= 0.8  # not the 1e-5 initialisation
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        assert not torch.all(bn.running_mean == 0)
        assert not torch.all(bn.running_var == 1)
        assert bn.running_var.min() >= 1e-2
        assert not torch.all(bn.weight == 1)


def test_blocks_are_far_from_the_identity_and_activations_stay_at_unit_scale() -> None:
    for config in (FFN, MHSA):
        module = prepared_module(config)
        x = seeded_input(config.input_shape, 0)
        with torch.no_grad():
            y = module(x)
        change = (y - x).norm() / x.norm()
        assert change > 0.2, config.key
        assert 0.1 < y.std() < 10, config.key


def test_no_denormal_or_degenerate_values() -> None:
    for config in (StemConfig(224, 32), MHSA, HeadConfig(224, 176)):
        module = prepared_module(config)
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            nonzero = t[t != 0].abs()
            assert nonzero.numel() == 0 or nonzero.min() > 1e-30, name
            if t.numel() > 1:
                assert not torch.all(t == t.flatten()[0]), f"{config.key}: {name} is constant"


def test_batchnorm_without_spatial_extent_falls_back_to_random_statistics() -> None:
    # BatchNorm1d on a (1, C) input cannot compute batch statistics; preparation must not fail.
    module = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    prepare_for_export(module, 0, torch.randn(1, 8))
    bn = module[1]
    assert not bn.training and bn.running_var.min() >= 0.5 and not torch.all(bn.running_mean == 0)


def test_parity_tolerance_scales_with_the_reference() -> None:
    import numpy as np

    ref = np.full((2, 2), 100.0)
    assert parity_result([ref], [ref + 5e-3], 1e-4)["status"] == "passed"  # 5e-3 <= 1e-4 * 100
    assert parity_result([ref], [ref + 2e-2], 1e-4)["status"] == "failed"
    small = np.full((2,), 1e-3)
    assert parity_result([small], [small + 2e-4], 1e-4)["status"] == "failed"  # floor of 1
    assert parity_result([small], [np.array([np.nan, 0.0])], 1e-4)["status"] == "failed"
    assert parity_result([small], [np.zeros(3)], 1e-4)["status"] == "failed"


def test_parse_formats() -> None:
    assert parse_formats("onnx, coreml") == ("onnx", "coreml")
    assert parse_formats(["COREML", "coreml"]) == ("coreml",)


def test_a_batch_one_only_module_is_calibrated_on_one_sample() -> None:
    class BatchOne(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)).reshape(1, 8, 14 * 14)  # fails for any other batch size

    module = BatchOne()
    x = torch.randn(4, 3, 16, 16)
    prepare_for_export(module, 0, x)
    with torch.no_grad():
        first = module.conv(x[:1])
    assert torch.allclose(module.bn.running_mean, first.mean(dim=(0, 2, 3)), atol=1e-5)


def test_whole_models_have_realistic_output_scale() -> None:
    from latbench.blocks.candidates import resolve_candidate
    from latbench.export.common import reference_outputs

    cand = resolve_candidate("efficientformerv2_s0")
    (logits,) = reference_outputs(prepared_module(cand), seeded_input(cand.input_shape, 0))
    assert 0.3 < float(logits.abs().max()) < 50
