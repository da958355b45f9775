import json

import pytest
import yaml

from latbench.core.errors import UsageError
from latbench.space import Arch, SearchSpace, StageArch, named_arch


def test_default_space_dimensions():
    space = SearchSpace.default()
    assert [s.widths for s in space.stages] == [(32, 40), (48, 64, 80), (96, 120, 144, 192), (176, 224, 288, 384)]
    assert [(s.depth_min, s.depth_max) for s in space.stages] == [(1, 5), (1, 5), (2, 15), (2, 10)]
    assert all(s.expansions == (2, 3, 4) for s in space.stages)
    assert [s.attention for s in space.stages] == [False, False, True, True]
    assert space.resolutions == (224,)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_arch_round_trip(tmp_path, fmt):
    arch = SearchSpace.default().sample_many(1, seed=3)[0]
    arch = Arch(arch.stages, arch.resolution, "mine")
    path = tmp_path / f"a.{fmt}"
    arch.save(path)
    back = Arch.load(path)
    assert back == arch and back.name == "mine"
    if fmt == "json":
        assert json.loads(path.read_text())["stages"][0]["width"] == arch.widths[0]


def test_sampling_is_seeded_and_valid():
    space = SearchSpace.default()
    a = space.sample_many(50, seed=7)
    assert a == space.sample_many(50, seed=7)
    assert a != space.sample_many(50, seed=8)
    for arch in a:
        space.validate(arch)
        assert all(s.attention <= s.depth for s in arch.stages)
    assert len({x.digest() for x in a}) == 50
    assert any(x.stages[2].attention > 0 for x in a) and any(x.stages[3].attention == 0 for x in a)


def _write(tmp_path, data):
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _default_dict():
    return SearchSpace.default().to_dict()


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d.update(colour="red"), "unknown key 'colour'"),
        (lambda d: d["stages"][1].update(widht=[1]), "stages[1]: unknown key 'widht'"),
        (lambda d: d["stages"][0].update(widths=[]), "stages[0].widths: empty choice list"),
        (lambda d: d["stages"][2].update(depth=[15, 2]), "stages[2].depth: inverted range"),
        (lambda d: d["stages"][3].update(widths=[176, 22.5]), "22.5 is not a positive integer"),
        (lambda d: d["stages"][0].update(attention=True), "only possible in stages 3 and 4"),
        (lambda d: d.update(resolutions=[230]), "multiple of 32"),
        (lambda d: d["stages"].pop(), "list of 4 stages"),
    ],
)
def test_space_validation_errors_name_file_and_key(tmp_path, mutate, expect):
    d = _default_dict()
    mutate(d)
    path = _write(tmp_path, d)
    with pytest.raises(UsageError) as err:
        SearchSpace.load(path)
    msg = str(err.value)
    assert str(path) in msg and expect in msg, msg


def test_space_file_not_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("stages: [\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        SearchSpace.load(p)


def test_custom_space_round_trip(tmp_path):
    d = _default_dict()
    d["stages"][2]["depth"] = 4
    d["resolutions"] = [224, 256]
    space = SearchSpace.load(_write(tmp_path, d))
    assert space.stages[2].depth_min == space.stages[2].depth_max == 4
    assert space.resolutions == (224, 256)
    assert space.digest() != SearchSpace.default().digest()


def test_validate_names_offending_stage_and_block():
    space = SearchSpace.default()
    s0 = named_arch("efficientformerv2_s0")
    bad_exp = Arch(s0.stages[:2] + (StageArch(96, (4, 4, 5), 1),) + s0.stages[3:], 224, "x")
    with pytest.raises(UsageError, match="stage 3 block 3 expansion 5"):
        space.validate(bad_exp)
    bad_w = Arch((StageArch(24, (4,)),) + s0.stages[1:], 224, "x")
    with pytest.raises(UsageError, match="stage 1 width 24"):
        space.validate(bad_w)
    with pytest.raises(UsageError, match="resolution 256 is not in space"):
        space.validate(named_arch("efficientformerv2_s0", 256))


@pytest.mark.parametrize(
    "data, expect",
    [
        ({"stages": []}, "list of 4 stages"),
        ({"stages": [{"width": 32, "expansions": [4]}] * 3 + [{"width": 8, "expansions": [4], "attention": 2}]},
         "stage 4: attention must be an integer from 0 to the depth 1"),
        ({"stages": [{"width": 32, "expansions": [4], "attention": 1}] + [{"width": 8, "expansions": [4]}] * 3},
         "stage 1: attention blocks are only possible"),
        ({"stages": [{"width": "wide", "expansions": [4]}] * 4}, "stage 1: width must be an integer from 1 to 4096"),
        ({"stages": [{"width": 32, "expansions": [4, 0]}] * 4}, "stage 1 block 2: expansion ratio"),
        ({"colour": 1, "stages": []}, "unknown key 'colour'"),
    ],
)
def test_arch_validation_errors(data, expect):
    with pytest.raises(UsageError, match=expect.replace("[", r"\[")):
        Arch.from_dict(data, source="f.yaml")


def test_largest_is_a_member():
    space = SearchSpace.default()
    big = space.largest()
    space.validate(big)
    assert big.depths == [5, 5, 15, 10] and big.widths == [40, 80, 192, 384]
