import pytest
import yaml
from _support import latbench_subprocess


def test_models_json(run_cli_json):
    rows = run_cli_json("models")
    names = [r["name"] for r in rows]
    for n in ("efficientformerv2_s0", "efficientformerv2_l", "mobilenetv2_100", "mobilevit_xs"):
        assert n in names
    assert {r["name"]: r["default_resolution"] for r in rows}["mobilevit_xxs"] == 256


def test_model_info_json(run_cli_json):
    info = run_cli_json("model", "info", "efficientformerv2_s1")
    assert info["name"] == "efficientformerv2_s1"
    assert info["params"] == 6_185_560
    assert round(info["macs"] / 1e9, 3) == 0.652
    assert info["input_shape"] == [1, 3, 224, 224]


def test_model_info_arch_file_and_resolution(run_cli_json, tmp_path):
    from latbench.space import SearchSpace

    arch = SearchSpace.default().sample_many(1, seed=5)[0]
    path = tmp_path / "cand.yaml"
    path.write_text(arch.to_yaml())
    info = run_cli_json("model", "info", str(path), "--resolution", "256")
    assert info["name"] == "cand" and info["input_shape"] == [1, 3, 256, 256]
    assert info["arch"]["stages"][2]["width"] == arch.widths[2]


def test_model_info_reference_model(run_cli_json):
    info = run_cli_json("model", "info", "mobilenetv2_100")
    assert info["params"] == 3_504_872 and info["blocks"] == ["model-mobilenetv2_100-r224"]


def test_model_info_with_checkpoint(run_cli_json, tmp_path):
    import torch

    from latbench.models import create_model

    path = tmp_path / "eformer_s0_450.pth"
    torch.save({"model": create_model("efficientformerv2_s0").state_dict()}, path)
    info = run_cli_json("model", "info", "efficientformerv2_s0", "--checkpoint", str(path))
    assert info["checkpoint"] == str(path)


def test_space_show_sample_blocks_json(run_cli_json):
    show = run_cli_json("space", "show")
    assert show["unique_blocks"] == {"224": 87}
    sample = run_cli_json("space", "sample", "--n", "3", "--seed", "4")
    assert len(sample) == 3 and all(len(a["stages"]) == 4 for a in sample)
    assert sample == run_cli_json("space", "sample", "--n", "3", "--seed", "4")
    blocks = run_cli_json("space", "blocks")
    assert len(blocks) == 87
    assert {"key", "kind", "input_shape"} <= set(blocks[0])
    assert blocks[0]["input_shape"] == [1, 3, 224, 224]


def test_custom_space_flag(run_cli_json, tmp_path):
    from latbench.space import SearchSpace

    d = SearchSpace.default().to_dict()
    for st in d["stages"]:
        st["widths"] = st["widths"][:1]
        st["expansions"] = [4]
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(d))
    blocks = run_cli_json("space", "blocks", "--space", str(path))
    assert len(blocks) == 1 + 4 + 2 + 2 + 1 + 1  # stem, ffn x4, mhsa x2, embed x2, attndown, head


@pytest.mark.parametrize(
    "args, needle",
    [
        (["model", "info", "efficientformerv2_s9"], "known models are"),
        (["model", "info", "missing.yaml"], "does not exist"),
        (["model", "info", "efficientformerv2_s0", "--resolution", "100"], "multiple of 32"),
        (["space", "show", "--space", "nope.yaml"], "does not exist"),
        (["space", "sample", "--n", "0"], "--samples must be >= 1"),
        (["space", "sample", "--resolution", "256"], "not in space"),
    ],
)
def test_user_errors_are_one_line_exit_2(run_cli, args, needle):
    code, out, err = run_cli(*args)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_subprocess_exit_codes_no_traceback():
    bad = latbench_subprocess("model", "info", "nope")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "known models are" in bad.stderr
    usage = latbench_subprocess("space", "frob")
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
    ok = latbench_subprocess("models")
    assert ok.returncode == 0 and "efficientformerv2_s0" in ok.stdout
