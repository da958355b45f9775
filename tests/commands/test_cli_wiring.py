"""Every command module is wired in, and nothing is skipped quietly."""

from __future__ import annotations

from pathlib import Path

import latbench.commands
from latbench import cli


def test_every_command_module_is_registered():
    here = Path(latbench.commands.__file__).parent
    modules = {p.stem for p in here.glob("*.py") if not p.stem.startswith("_")}
    helpers = {"model_build"}  # registered by model.py as `model build`
    assert set(cli.COMMAND_MODULES) == modules - helpers
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"model", "space", "export", "devices", "profile", "lut", "mes", "search", "demo", "agent"} <= set(sub.choices)


def test_a_journal_failing_mid_command_is_one_line(run_cli, monkeypatch):
    import sqlite3

    from latbench import api

    def broken(path):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(api, "repair_table", broken)
    code, _, err = run_cli("lut", "repair", "somewhere")
    assert code == 1 and err.count("\n") == 1 and "disk I/O error" in err and "Traceback" not in err
