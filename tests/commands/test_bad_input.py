"""A battery of wrong invocations across every command: each must exit non-zero with a single line
on stderr, no traceback, and leave every existing file as it was.

The table used is real (a tiny build on a scripted device, so it has a journal) and is damaged in
the ways users damage tables: emptied, truncated, hand-edited, a meta.json that is not a mapping.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from scripted_device import ScriptedRunner

from latbench.blocks.configs import FFNConfig
from latbench.tables.build import BuildSettings, TableBuilder

FFNS = [FFNConfig(224, 3, w, e) for w in (96, 120) for e in (3, 4)]


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("battery") / "t"
    settings = BuildSettings(min_separation_s=0.0, profile=False, calibration_models=0, jobs=1)
    TableBuilder(ScriptedRunner(lambda key: 0.2), out, settings).build(FFNS)
    return out


@pytest.fixture
def world(tmp_path, table_dir) -> Path:
    """A working directory with a good table, damaged copies of it, an arch file and a file."""
    shutil.copytree(table_dir, tmp_path / "good")
    for name in ("empty", "text", "metalist", "blank", "truncated", "nometa", "oldschema"):
        shutil.copytree(table_dir, tmp_path / name)
    (tmp_path / "empty" / "blocks.csv").write_text("")
    blocks = (table_dir / "blocks.csv").read_text().splitlines()
    header = blocks[0].split(",")
    col = header.index("latency_ms")

    def edit_cell(line: str, value: str) -> str:
        cells = line.split(",")
        cells[col] = value
        return ",".join(cells)

    (tmp_path / "text" / "blocks.csv").write_text("\n".join([blocks[0], edit_cell(blocks[1], "fast")] + blocks[2:]))
    (tmp_path / "blank" / "blocks.csv").write_text("\n".join([blocks[0], edit_cell(blocks[1], "")] + blocks[2:]))
    (tmp_path / "truncated" / "blocks.csv").write_text("\n".join(blocks[:3]) + "\n")
    (tmp_path / "metalist" / "meta.json").write_text("[1, 2]")
    (tmp_path / "nometa" / "meta.json").unlink()
    meta = json.loads((table_dir / "meta.json").read_text())
    meta["schema_version"] = 1
    (tmp_path / "oldschema" / "meta.json").write_text(json.dumps(meta))
    for name in ("nojournal", "garbagejournal", "cutjournal", "overheadstr", "devlist", "tenx"):
        shutil.copytree(table_dir, tmp_path / name)
    (tmp_path / "nojournal" / "journal.sqlite").unlink()
    (tmp_path / "garbagejournal" / "journal.sqlite").write_bytes(b"not a database\n" * 200)
    data = (table_dir / "journal.sqlite").read_bytes()
    (tmp_path / "cutjournal" / "journal.sqlite").write_bytes(data[: len(data) // 3])
    for name, key, value in (("overheadstr", "overhead", "calibrated"), ("devlist", "device_id", ["cpu", "gpu"])):
        edited = json.loads((table_dir / "meta.json").read_text())
        edited[key] = value
        (tmp_path / name / "meta.json").write_text(json.dumps(edited))
    # A hand edit whose author also rewrote the checksum: an entry 10x above its own p95.
    p95 = float(blocks[1].split(",")[header.index("p95_ms")])
    text = "\n".join([blocks[0], edit_cell(blocks[1], str(10 * p95))] + blocks[2:]) + "\n"
    (tmp_path / "tenx" / "blocks.csv").write_text(text)
    meta["schema_version"] = json.loads((table_dir / "meta.json").read_text())["schema_version"]
    meta["files"]["blocks.csv"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (tmp_path / "tenx" / "meta.json").write_text(json.dumps(meta))
    from latbench.tables.synthetic import synthetic_table

    synthetic_table().save(tmp_path / "spacetable")
    s0 = {"stages": [{"width": 32, "expansions": [4] * 7}, {"width": 48, "expansions": [4, 4]},
                     {"width": 96, "expansions": [4, 3, 3, 3, 4, 4], "attention": 2},
                     {"width": 176, "expansions": [4, 3, 3, 4], "attention": 2}]}
    (tmp_path / "deep.yaml").write_text(json.dumps(s0))
    (tmp_path / "bigres.yaml").write_text(json.dumps({**s0, "resolution": 1048576}))
    (tmp_path / "wide.yaml").write_text(json.dumps({**s0, "stages": [dict(s0["stages"][0], width=10**6)]
                                                    + s0["stages"][1:]}))
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\n")
    import datetime

    import torch

    torch.save({"model": {"when": datetime.date(2024, 1, 1)}}, tmp_path / "pickled.pth")  # not weights only
    (tmp_path / "arch.yaml").write_text("stages: [{width: 32, expansions: [4]}]\n")  # 1 stage of 4
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "empty.onnx").write_bytes(b"")
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# (arguments, exit code, a phrase the one-line message must contain). "{w}" is the world directory.
BATTERY = [
    # the command line itself
    (["frobnicate"], 2, "invalid choice"),
    (["lut"], 2, "required"),
    (["lut", "build"], 2, "say what to measure"),
    (["lut", "build", "--space", "--resolution", "256"], 2, "not in space"),
    (["lut", "build", "--device", "nokia3310", "--space", "--out", "{w}/new"], 2, "unknown device"),
    (["lut", "build", "--model", "efficientformerv2_s0", "--rounds", "0"], 2, "--rounds must be >= 1"),
    (["lut", "build", "--model", "efficientformerv2_s0", "--rounds", "5", "--max-rounds", "3"], 2, "--max-rounds"),
    (["lut", "build", "--model", "efficientformerv2_s0", "--out", "{w}/afile"], 2, "is a file"),
    (["lut", "build", "--model", "efficientformerv2_s0", "--clock", "sundial"], 2, "invalid choice"),
    (["lut", "build", "--model", "efficientformerv2_s0", "--perf-test", "/x"], 2, "does not apply to cpu"),
    (["lut", "build", "--arch", "{w}/arch.yaml"], 2, "'stages' must be a list of 4 stages"),
    # damaged tables: one line naming the file and the fix
    (["lut", "show", "{w}/empty"], 2, "blocks.csv was truncated or edited"),
    (["lut", "show", "{w}/text"], 2, "blocks.csv was truncated or edited"),
    (["lut", "show", "{w}/metalist"], 2, "meta.json holds a list"),
    (["lut", "estimate", "{w}/blank", "efficientformerv2_s0"], 2, "lut repair"),
    (["lut", "estimate", "{w}/truncated", "efficientformerv2_s0"], 2, "truncated or edited"),
    (["lut", "show", "{w}/nometa"], 2, "meta.json is missing"),
    (["lut", "show", "{w}/oldschema"], 2, "has schema 1"),
    (["lut", "show", "{w}/nowhere"], 2, "no latency table"),
    (["lut", "show", "{w}/afile"], 2, "not a latency table"),
    (["lut", "repair", "{w}/afile"], 2, "no journal.sqlite"),
    # estimates
    (["lut", "estimate", "{w}/good", "efficientformerv2_s9"], 2, "unknown model"),
    (["lut", "estimate", "{w}/good", "efficientformerv2_s0"], 2, "--model efficientformerv2_s0"),
    (["lut", "estimate", "{w}/good", "mobilevit_xs"], 2, "is 256x256"),
    (["lut", "estimate", "{w}/good", "{w}/missing.yaml"], 2, "does not exist"),
    (["lut", "diff", "{w}/good", "{w}/nowhere"], 2, "no latency table"),
    (["lut", "validate", "{w}/good"], 2, "not built for a search space"),
    (["lut", "validate", "{w}/good", "--samples", "-1"], 2, "--samples must be >= 0"),
    (["lut", "check", "{w}/good", "--key", "ffn-r224-s9-c1-e1"], 2, "has no entry"),
    (["lut", "check", "{w}/good", "--sample", "0"], 2, "--samples must be >= 1"),
    (["lut", "check", "{w}/good", "--samples", "0"], 2, "--samples must be >= 1"),
    (["space", "sample", "--samples", "0"], 2, "--samples must be >= 1"),
    (["space", "sample", "--n", "0"], 2, "--samples must be >= 1"),
    # MES, search, models, export, profile, devices
    (["mes", "report", "--lut", "{w}/good", "efficientformerv2_s0", "--out", "/proc/x"], 2, "not writable"),
    (["mes", "report", "--lut", "{w}/good", "efficientformerv2_s0", "--out", "{w}/afile/x"], 2, "is a file"),
    (["mes", "report", "efficientformerv2_s0"], 2, "give a latency table"),
    (["mes", "report", "--lut", "{w}/good", "efficientformerv2_s0", "--alpha-latency", "x"], 2, "invalid"),
    (["search", "--lut", "{w}/good", "--accuracy", "nonsense", "--target-latency", "1"], 2, "oracle"),
    (["model", "info", "efficientformerv2_s0", "--resolution", "100"], 2, "multiple of 32"),
    (["model", "info", "mobilenetv2_100", "--resolution", "100"], 2, "multiple of 32"),
    (["model", "info", "{w}/arch.yaml"], 2, "stages"),
    (["model", "build", "--lut", "{w}/good", "--target-latency", "1", "--accuracy", "proxy", "--out",
      "{w}/final.txt"], 2, ".yaml"),
    (["export", "--model", "efficientformerv2_s0", "--format", "tensorrt", "--out", "{w}/x"], 2, "unknown export"),
    (["export", "--model", "efficientformerv2_s0", "--out", "{w}/afile"], 2, "is a file"),
    (["profile", "{w}/empty.onnx"], 2, "not a readable ONNX model"),
    (["profile", "efficientformerv2_s0", "--runs", "0"], 2, "--runs must be >= 1"),
    (["profile", "efficientformerv2_s0", "--device", "mac"], 1, "needs macOS"),
    (["profile", "efficientformerv2_s0", "--out", "{w}/afile"], 2, "is a file"),
    (["profile", "efficientformerv2_s0", "--compute-units", "GPU_ONLY"], 2, "invalid choice"),
    (["space", "sample", "--space", "{w}/arch.yaml"], 2, "space file"),
    # a table shared without its journal, or with a damaged one: refused, nothing replaced
    (["lut", "build", "--model", "mobilenetv2_100", "--out", "{w}/nojournal", "--runs", "5"], 2,
     "without its journal.sqlite"),
    (["lut", "build", "--model", "mobilenetv2_100", "--out", "{w}/garbagejournal"], 2, "is damaged"),
    (["lut", "build", "--model", "mobilenetv2_100", "--out", "{w}/cutjournal"], 2, "is damaged"),
    (["lut", "repair", "{w}/garbagejournal"], 2, "is damaged (file is not a database)"),
    (["lut", "repair", "{w}/cutjournal"], 2, "is damaged"),
    (["lut", "check", "{w}/garbagejournal", "--fix"], 2, "is damaged"),
    (["lut", "repair", "{w}/nojournal"], 2, "no journal.sqlite"),
    # meta.json fields of the wrong type, an entry edited past its own samples
    (["lut", "estimate", "{w}/overheadstr", "mobilenetv2_100"], 2, "'overhead' that is not a mapping"),
    (["lut", "show", "{w}/devlist"], 2, "'device_id' that is not a string"),
    (["lut", "show", "{w}/tenx"], 2, "far outside its own samples"),
    (["lut", "diff", "{w}/good", "{w}/tenx"], 2, "far outside its own samples"),
    # architectures too big to build, or outside the table's space
    (["model", "info", "efficientformerv2_s0", "--resolution", "1048576"], 2, "from 64 to 2048"),
    (["model", "info", "mobilenetv2_100", "--resolution", "1048576"], 2, "to 2048"),
    (["model", "info", "{w}/bigres.yaml"], 2, "resolution must be an integer from 1 to 2048"),
    (["model", "info", "{w}/wide.yaml"], 2, "width must be an integer from 1 to 4096"),
    (["model", "info", "{w}/bomb.yaml"], 2, "expands to over"),
    (["space", "sample", "--space", "{w}/bomb.yaml"], 2, "expands to over"),
    (["lut", "estimate", "{w}/spacetable", "{w}/deep.yaml"], 2, "stage 1 depth 7 not in 1-5"),
    (["export", "--model", "efficientformerv2_s0", "--resolution", "1048576", "--out", "{w}/x"], 2, "to 2048"),
    # numbers that were silently taken
    (["lut", "build", "--model", "efficientformerv2_s0", "--time-cap", "0"], 2, "--time-cap: must be a finite"),
    (["lut", "build", "--model", "efficientformerv2_s0", "--time-cap", "nan"], 2, "--time-cap: must be a finite"),
    (["lut", "build", "--space", "--resolution", "0"], 2, "--resolution: must be >= 1"),
    (["lut", "estimate", "{w}/good", "mobilenetv2_100", "--resolution", "0"], 2, "--resolution: must be >= 1"),
    (["profile", "efficientformerv2_s0", "--resolution", "0"], 2, "--resolution: must be >= 1"),
    (["profile", "efficientformerv2_s0", "--threads", "100000"], 2, "--threads must be from 1 to 256"),
    (["lut", "build", "--model", "efficientformerv2_s0", "--threads", "0"], 2, "--threads must be from 1 to 256"),
    (["profile", "efficientformerv2_s0", "--device", ""], 2, "is empty"),
    (["lut", "build", "--model", "efficientformerv2_s0", "--device", " "], 2, "is empty"),
    (["mes", "report", "--lut", "{w}/good", "mobilenetv2_100", "--latency-unit", "-1"], 2, "positive number"),
    # messages in latbench's words, not a library's
    (["model", "info", "efficientformerv2_s0", "--checkpoint", "{w}/pickled.pth"], 2, "loads checkpoints weights-only"),
]


@pytest.mark.parametrize("args, code, phrase", BATTERY, ids=[" ".join(a)[:60] for a, _, _ in BATTERY])
def test_wrong_invocations_are_one_line_errors_that_change_nothing(run_cli, world, args, code, phrase):
    before = snapshot(world)
    got, out, err = run_cli(*[a.replace("{w}", str(world)) for a in args])
    assert got == code, err
    assert err.count("\n") == 1 and "error:" in err, err
    assert "Traceback" not in err and phrase in err, err
    assert "weights_only" not in err and "np.float64" not in err and "a int" not in err, err
    assert snapshot(world) == before  # nothing an existing file held was changed


def test_the_battery_is_long_enough():
    assert len(BATTERY) >= 60


def test_repair_rederives_a_damaged_table_from_its_journal(run_cli_json, world):
    for name in ("empty", "text", "blank", "truncated", "metalist", "nometa", "oldschema"):
        res = run_cli_json("lut", "repair", str(world / name))
        good = json.loads((world / "good" / "meta.json").read_text())
        assert res["blocks"] == good["files"]["blocks.csv"]["rows"] > len(FFNS)  # the blocks and their empties
        assert res["files"]["blocks.csv"]["sha256"] == good["files"]["blocks.csv"]["sha256"]
        shown = run_cli_json("lut", "show", str(world / name))
        good = run_cli_json("lut", "show", str(world / "good"))
        assert {b["key"]: b["latency_ms"] for b in shown["blocks"]} == {b["key"]: b["latency_ms"] for b in good["blocks"]}


def test_outputs_never_contain_nan(run_cli, world):
    code, out, _ = run_cli("lut", "show", str(world / "good"), "--json")
    assert code == 0 and "NaN" not in out and "Infinity" not in out
    json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    meta = (world / "good" / "meta.json").read_text()
    assert "NaN" not in meta
    # Counts are whole numbers, even in columns a blank cell makes pandas read as floats.
    blocks = json.loads(out)["blocks"]
    assert all(isinstance(b["n"], int) and isinstance(b["rounds"], int) for b in blocks)
    assert all(b["width"] is None or isinstance(b["width"], int) for b in blocks)
    assert any(b["width"] is None for b in blocks) and any(isinstance(b["width"], int) for b in blocks)


def test_show_prints_missing_values_blank_not_nan(run_cli, tmp_path):
    # A synthetic table has no sample counts (n is null): the human view must still render.
    from latbench.tables.synthetic import synthetic_table

    table = synthetic_table()
    table.meta["device"] = {"device_kind": "synthetic"}
    path = table.save(tmp_path / "synthetic")
    code, out, err = run_cli("lut", "show", str(path))
    assert code == 0, err
    assert "slowest blocks" in out and "nan" not in out.lower()
