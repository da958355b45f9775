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
