"""`latbench export`: real runs on a tiny space and a model, JSON output, one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latbench.space import named_arch

TINY_SPACE = {
    "name": "tiny",
    "resolutions": [224],
    "stages": [
        {"widths": [32], "depth": [1, 2], "expansions": [2], "attention": False},
        {"widths": [48], "depth": [1, 2], "expansions": [2], "attention": False},
        {"widths": [96], "depth": [2, 3], "expansions": [2], "attention": True},
        {"widths": [176], "depth": [2, 3], "expansions": [2], "attention": True},
    ],
}


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


def _arch_file(tmp_path: Path, **overrides) -> Path:
    arch = named_arch("efficientformerv2_s0").to_dict()
    arch.update(overrides)
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump(arch))
    return path


def test_space_export_json_then_cached(run_cli, tiny_space: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("export", "--space", str(tiny_space), "--format", "onnx", "--out", str(out), "--jobs", "1")
    code, stdout, err = run_cli(*args, "--json")
    assert code == 0, err
    rows = json.loads(stdout)
    # stem, 4 FFNs, 2 attention mixers, 2 conv embeddings, attention downsampling, head
    assert len(rows) == 11
    assert {r["status"] for r in rows} == {"exported"}
    for r in rows:
        assert set(r) >= {"key", "format", "path", "sha256", "size", "status", "error"}
        assert r["format"] == "onnx" and r["error"] is None and Path(r["path"]).is_file()
        assert r["parity"]["status"] == "passed"
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert "11 artifacts: 0 exported, 11 cached, 0 failed" in stdout
    assert err == ""  # no converter noise, no progress bar when nothing is left to do


def test_model_export_human_output(run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("export", "--model", "mobilenetv2_100", "--format", "onnx", "--out", str(tmp_path),
                             "--no-progress")
    assert code == 0, err
    assert "parity" in out and "exported" in out  # (the table folds long cells at 80 columns)
    assert "1 artifacts: 1 exported, 0 cached, 0 failed" in out


def test_arch_file_checked_against_space_exports_the_whole_model(run_cli, tmp_path: Path) -> None:
    arch = _arch_file(tmp_path, name="small", stages=[
        {"width": 32, "expansions": [2]}, {"width": 48, "expansions": [2]},
        {"width": 96, "expansions": [2, 2]}, {"width": 176, "expansions": [2, 2], "attention": 1}])
    code, out, err = run_cli("export", "--arch", str(arch), "--space", "--format", "onnx", "--jobs", "1",
                             "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["key"].startswith("arch-") and row["format"] == "onnx" and row["status"] == "exported"
    assert row["parity"]["status"] == "passed"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--space", "--format", "onnx,tensorrt"], "unknown export format 'tensorrt'"),
        (["--space", "--format", ","], "no export format given"),
        (["--space", "--resolution", "256"], "resolution 256 is not in space"),
        (["--space", "--deployment-target", "iOS14"], "unknown Core ML deployment target 'iOS14'"),
        (["--space", "--jobs", "0"], "--jobs must be >= 1"),
        ([], "nothing to export"),
        (["--model", "resnet50"], "unknown model 'resnet50'"),
        (["--arch", "missing.yaml"], "arch file missing.yaml does not exist"),
        (["--arch", "efficientformerv2_s0"], "--arch expects an arch file"),
        (["--model", "mobilenetv2_100", "--space"], "not an EfficientFormerV2 subnet"),
        (["--model", "efficientformerv2_s0", "--resolution", "100"], "resolution 100 is not supported"),
    ],
)
def test_bad_input_is_one_line_exit_2(run_cli, tmp_path: Path, extra: list[str], message: str) -> None:
    code, out, err = run_cli("export", *extra, "--out", str(tmp_path))
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("*.onnx"))


def test_arch_outside_the_space_exit_2(run_cli, tmp_path: Path, tiny_space: Path) -> None:
    wide = _arch_file(tmp_path, stages=[
        {"width": 32, "expansions": [4, 4]}, {"width": 48, "expansions": [4]},
        {"width": 100, "expansions": [4, 4], "attention": 1}, {"width": 176, "expansions": [4, 4], "attention": 1}])
    code, _, err = run_cli("export", "--arch", str(wide), "--space", "--out", str(tmp_path))
    assert code == 2 and "is outside space 'efficientformerv2': stage 3 width 100" in err and err.count("\n") == 1
    s0 = _arch_file(tmp_path)
    code, _, err = run_cli("export", "--arch", str(s0), "--space", str(tiny_space), "--out", str(tmp_path))
    assert code == 2 and "is outside space 'tiny'" in err
    code, _, err = run_cli("export", "--model", "efficientformerv2_s0", "--space", str(tiny_space),
                           "--out", str(tmp_path))
    assert code == 2 and "is outside space 'tiny'" in err


def test_unwritable_output_directory_exit_2(run_cli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_cli("export", "--space", "--format", "onnx", "--out", str(blocker / "sub"))
    assert code == 2 and f"output directory {blocker / 'sub'}: {blocker} is a file" in err and err.count("\n") == 1


def test_argparse_errors_are_one_line_exit_2(run_cli, tmp_path: Path) -> None:
    for args in (["--space", "--precision", "int4"], ["--model", "efficientformerv2_s0", "--arch", "a.yaml"]):
        code, _, err = run_cli("export", *args, "--out", str(tmp_path))
        assert code == 2 and err.count("\n") == 1 and "error:" in err


def test_real_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    # Not `from _support import ...`: with several conftest.py files under tests/ that name is ambiguous.
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "latbench",
         "export", "--space", "--format", "onnx,tensorrt", "--out", str(tmp_path)],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == "latbench: error: unknown export format 'tensorrt': choose from onnx, coreml, tflite\n"
