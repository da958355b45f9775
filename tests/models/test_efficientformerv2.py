import pytest
import torch

from latbench.core.errors import UsageError
from latbench.models import create_model
from latbench.models.efficientformerv2 import EfficientFormerV2, load_checkpoint, offset_index_grid
from latbench.space import Arch, SearchSpace, StageArch, named_arch

PUBLISHED = {
    "efficientformerv2_s0": (3_600_256, 573),
    "efficientformerv2_s1": (6_185_560, 727),
    "efficientformerv2_s2": (12_710_112, 1063),
    "efficientformerv2_l": (26_322_288, 1399),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_param_counts_and_state_dict_layout(name):
    model = create_model(name)
    params, sd_len = PUBLISHED[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == sd_len
    head = model.head.weight.numel() + model.head.bias.numel()
    assert sum(p.numel() for p in model.parameters()) - head == {
        "efficientformerv2_s0": 3_423_256,
        "efficientformerv2_s1": 5_960_560,
        "efficientformerv2_s2": 12_421_112,
        "efficientformerv2_l": 25_937_288,
    }[name]


def test_s0_official_key_layout():
    sd = create_model("efficientformerv2_s0").state_dict()
    for key, shape in {
        "patch_embed.0.weight": (16, 3, 3, 3),
        "patch_embed.4.running_var": (32,),
        "network.0.0.layer_scale_2": (32, 1, 1),
        "network.0.0.mlp.mid.weight": (128, 1, 3, 3),
        "network.1.proj.weight": (48, 32, 3, 3),
        "network.4.5.token_mixer.attention_biases": (8, 49),
        "network.4.5.token_mixer.attention_bias_idxs": (49, 49),
        "network.4.5.token_mixer.stride_conv.0.weight": (96, 1, 3, 3),
        "network.4.5.token_mixer.talking_head1.weight": (8, 8, 1, 1),
        "network.4.5.token_mixer.proj.1.weight": (96, 1024, 1, 1),
        "network.5.attn.q.local.0.weight": (96, 1, 3, 3),
        "network.5.attn.attention_biases": (8, 196),
        "network.5.attn.attention_bias_idxs": (49, 196),
        "network.5.conv.weight": (176, 96, 3, 3),
        "network.6.3.token_mixer.attention_bias_idxs": (49, 49),
        "dist_head.weight": (1000, 176),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert "network.6.3.token_mixer.stride_conv.0.weight" not in sd  # stage 4 attention is unstrided
    assert "network.4.3.token_mixer.q.0.weight" not in sd  # only the last 2 blocks of stage 3 attend


def test_bias_index_maps_offsets_row_major():
    idx = offset_index_grid(7, 7)
    assert idx.shape == (49, 49)
    assert idx[0].tolist() == list(range(49))  # from (0,0) the offset (dy,dx) sits at dy*7+dx
    assert idx[48, 0] == 6 * 7 + 6
    down = offset_index_grid(7, 14)
    assert down.shape == (49, 196)
    assert down[0].tolist() == list(range(196))
    assert down[8, 0] == 2 * 14 + 2  # query (1,1) sits at (2,2) of the 14x14 grid


def test_eval_output_is_mean_of_heads_and_training_returns_pair():
    torch.manual_seed(0)
    model = create_model("efficientformerv2_s0")
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    x = torch.randn(2, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)[-1]
        pooled = model.norm(feats).flatten(2).mean(-1)
        expect = (model.head(pooled) + model.dist_head(pooled)) / 2
    assert out.shape == (2, 1000)
    torch.testing.assert_close(out, expect)
    model.train()
    pair = model(x)
    assert isinstance(pair, tuple) and len(pair) == 2 and pair[0].shape == (2, 1000)
    assert not torch.allclose(pair[0], pair[1])


@pytest.mark.parametrize("resolution", [224, 256, 288])
def test_resolutions_size_the_bias_tables(resolution):
    model = create_model("efficientformerv2_s0", resolution=resolution).eval()
    side = resolution // 32
    assert model.network[4][-1].token_mixer.attention_biases.shape == (8, side * side)
    assert model.network[5].attn.attention_bias_idxs.shape == (side * side, (2 * side) ** 2)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, resolution, resolution))
    assert [f.shape[-1] for f in feats] == [resolution // 4, resolution // 8, resolution // 16, resolution // 32]
    assert [f.shape[1] for f in feats] == [32, 48, 96, 176]


def test_bad_resolution_is_a_usage_error():
    with pytest.raises(UsageError, match="multiple of 32"):
        create_model("efficientformerv2_s0", resolution=230)


def test_subnet_with_per_stage_attention():
    arch = Arch(
        (
            StageArch(40, (2,)),
            StageArch(80, (3, 2)),
            StageArch(120, (2, 2, 4), attention=3),
            StageArch(224, (4, 2), attention=0),
        )
    )
    model = EfficientFormerV2(arch).eval()
    kinds = [type(b).__name__ for b in model.network[4]] + [type(b).__name__ for b in model.network[6]]
    assert kinds == ["AttnFFN"] * 3 + ["FFN"] * 2
    assert model.network[4][0].mlp.fc1.out_channels == 240
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def _official_layout_file(tmp_path, name, **mutate):
    model = create_model(name)
    torch.manual_seed(1)
    for p in model.parameters():
        p.data.normal_()
    state = dict(model.state_dict())
    for k in mutate.get("drop", []):
        state.pop(k)
    state.update(mutate.get("add", {}))
    path = tmp_path / f"eformer_{name}_450.pth"
    torch.save({"model": state, "epoch": 449}, path)
    return model, path


def test_checkpoint_round_trip_strict(tmp_path):
    ref, path = _official_layout_file(tmp_path, "efficientformerv2_s0")
    model = create_model("efficientformerv2_s0")
    load_checkpoint(model, path)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_mismatch_names_keys(tmp_path):
    _, path = _official_layout_file(
        tmp_path, "efficientformerv2_s0", drop=["network.5.attn.attention_bias_idxs"], add={"foo.bar": torch.zeros(1)}
    )
    with pytest.raises(UsageError) as err:
        load_checkpoint(create_model("efficientformerv2_s0"), path)
    msg = str(err.value)
    assert "network.5.attn.attention_bias_idxs" in msg and "foo.bar" in msg and "\n" not in msg


def test_checkpoint_of_other_variant_is_refused(tmp_path):
    _, path = _official_layout_file(tmp_path, "efficientformerv2_s1")
    with pytest.raises(UsageError, match="does not match"):
        load_checkpoint(create_model("efficientformerv2_s0"), path)


def test_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": SearchSpace.default()}, path)
    with pytest.raises(UsageError, match="weights-only"):
        load_checkpoint(create_model("efficientformerv2_s0"), path)


def test_named_archs_are_in_default_space():
    space = SearchSpace.default()
    for name in PUBLISHED:
        assert space.contains(named_arch(name))
