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
