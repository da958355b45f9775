from collections import Counter

import pytest
import torch

from latbench.blocks.configs import (
    arch_params,
    arch_slots,
    config_from_fields,
    decompose,
    space_blocks,
)
from latbench.models.efficientformerv2 import EfficientFormerV2
from latbench.space import NAMED_ARCHS, SearchSpace, named_arch


def test_default_space_unique_blocks_at_224():
    blocks = space_blocks(SearchSpace.default(), 224)
    keys = [b.key for b in blocks]
    assert len(keys) == len(set(keys)) == 87
    assert Counter(b.kind for b in blocks) == {"ffn": 39, "embed": 18, "attndown": 16, "mhsa": 8, "head": 4, "stem": 2}
    assert "ffn-r224-s2-c48-e3" in keys and "mhsa-r224-s3-c96" in keys and "attndown-r224-s3-c192-o384" in keys


def key_counts(arch):
    return Counter(c.key for c in decompose(arch))


def standalone_with_weights(slot, model_state):
    """The slot's standalone module with the full model's weights copied in (strictly)."""
    module = slot.config.build()
    module.load_state_dict({k: model_state[slot.prefix + k] for k in module.state_dict()}, strict=True)
    return module


def test_every_decomposed_key_is_in_the_space_blocks():
    space = SearchSpace.default()
    keys = {b.key for b in space_blocks(space, 224)}
    for arch in space.sample_many(30, seed=1) + [named_arch(n) for n in NAMED_ARCHS]:
        assert set(key_counts(arch)) <= keys


def test_key_counts_have_multiplicity():
    counts = key_counts(named_arch("efficientformerv2_s0"))
    assert counts["ffn-r224-s1-c32-e4"] == 2
    assert counts["ffn-r224-s3-c96-e3"] == 3
    assert counts["mhsa-r224-s3-c96"] == 2 and counts["mhsa-r224-s4-c176"] == 2
    assert sum(counts.values()) == 1 + 2 + 1 + 2 + 1 + (6 + 2) + 1 + (4 + 2) + 1


def test_fields_round_trip():
    for b in space_blocks(SearchSpace.default(), 224):
        assert config_from_fields(b.fields()) == b


def test_standalone_blocks_run_at_their_input_shape():
    for b in space_blocks(SearchSpace.default(), 224)[::9]:
        with torch.no_grad():
            out = b.build().eval()(torch.randn(b.input_shape))
        assert out.ndim in (2, 4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_analytic_params_match_built_model_random(seed):
    arch = SearchSpace.default().sample_many(1, seed=seed)[0]
    assert arch_params(arch) == sum(p.numel() for p in EfficientFormerV2(arch).parameters())
    for c in set(decompose(arch)):
        assert c.params() == sum(p.numel() for p in c.build().parameters()), c.key


@pytest.mark.parametrize("name", NAMED_ARCHS)
def test_analytic_params_match_published(name):
    assert arch_params(named_arch(name)) == sum(p.numel() for p in EfficientFormerV2(named_arch(name)).parameters())


def _randomised(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("arch", [named_arch("efficientformerv2_s0")] + SearchSpace.default().sample_many(2, seed=11))
def test_composition_reproduces_model(arch):
    model = _randomised(EfficientFormerV2(arch))
    state = model.state_dict()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        y = x
        for slot in arch_slots(arch):
            y = standalone_with_weights(slot, state).eval()(y)
        ref = model(x)
    assert ref.abs().max() > 0.01  # non-degenerate weights, so the check means something
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_macs_match_published():
    macs = {n: sum(c.macs() for c in decompose(named_arch(n))) / 1e9 for n in ("efficientformerv2_s0", "efficientformerv2_l")}
    assert round(macs["efficientformerv2_s0"], 3) == 0.396
    assert round(macs["efficientformerv2_l"], 3) == 2.553


def test_analytic_macs_equal_counted_macs():
    from latbench.blocks.configs import block_macs, overhead_blocks

    d = SearchSpace.default().to_dict()
    d["resolutions"] = [224, 256]
    blocks = space_blocks(SearchSpace.from_dict(d))
    sample = blocks[::7] + overhead_blocks(blocks)[:2]
    assert all(b._macs() == block_macs(b) for b in sample)
