"""Human output that can be copied: table cells are never split, JSON numbers keep their type."""

from __future__ import annotations

from rich.console import Console

from latbench.commands import _output

KEYS = ["model-mobilenetv2_100-r224", "attndown-r224-s3-c96-o176", "empty-r224-c32-h56-w56"]


def test_a_table_wider_than_an_80_column_terminal_keeps_every_cell_whole(capsys, monkeypatch):
    monkeypatch.setattr(_output, "console", lambda: Console(soft_wrap=True, width=80, force_terminal=True,
                                                             color_system=None))
    _output.print_table("slowest blocks", ["key", "latency ms", "agreement", "p5", "p95", "n", "warnings"],
                        [(k, 1.2345, "3/3", 1.1, 1.5, 200, "a warning that is long enough to need room")
                         for k in KEYS])
    out = capsys.readouterr().out
    for key in KEYS:
        assert key in out
    assert "a warning that is long enough to need room" in out and "p95" in out


def test_output_that_is_not_a_terminal_is_never_folded(capsys):
    _output.print_table(None, ["key", "warnings"], [(k * 4, "x" * 300) for k in KEYS])
    out = capsys.readouterr().out
    for key in KEYS:
        assert key * 4 in out
    assert "x" * 300 in out


def test_json_keeps_progress_on_stderr_unless_stderr_is_stdout(tmp_path):
    """A scripted run (`--json > out 2> log`) still logs its progress; with `2>&1` a progress line
    would break the JSON, so there is none."""
    import json
    import subprocess
    import sys

    args = [sys.executable, "-m", "latbench", "export", "--model", "mobilenetv2_100", "--format", "onnx",
            "--out", str(tmp_path / "a"), "--json"]
    split = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert split.returncode == 0, split.stderr
    assert json.loads(split.stdout)[0]["key"] == "model-mobilenetv2_100-r224"
    assert "export 1/1 model-mobilenetv2_100-r224" in split.stderr
    merged = subprocess.run([*args, "--force"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=300)
    assert merged.returncode == 0 and json.loads(merged.stdout)[0]["key"] == "model-mobilenetv2_100-r224"
    quiet = subprocess.run([*args, "--force", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "export 1/1" not in quiet.stderr


def test_progress_is_off_where_the_streams_cannot_be_told_apart(capsys):
    from argparse import Namespace

    # capsys replaces both streams with objects without a file descriptor.
    assert _output.shows_progress(Namespace(json=True)) is False
    assert _output.shows_progress(Namespace(json=False)) is True
    assert _output.shows_progress(Namespace(json=False, no_progress=True)) is False


def test_the_overhead_line_names_the_cold_weights_term_apart_from_the_scales():
    from latbench.commands.lut import describe_scales

    line = describe_scales({"scales": {"attention": 1.01, "rest": 1.01, "weights": 0.128}})
    assert line == "attention x1.0100, rest x1.0100, cold weights +0.128 ms per million parameters"
    assert describe_scales({"scales": {"attention": 1.2, "rest": 1.1}}) == "attention x1.2000, rest x1.1000"
