"""latbench.toml / [tool.latbench]: defaults a lab fixes once; flags win; bad files are one line."""

from __future__ import annotations

import pytest

from latbench.commands import _config
from latbench.core.errors import UsageError
from latbench.tables.synthetic import synthetic_table


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LATBENCH_CONFIG", raising=False)
    _config.defaults.cache_clear()
    yield tmp_path
    _config.defaults.cache_clear()


def test_the_configured_table_is_the_default(lab, run_cli_json):
    synthetic_table().save(lab / "tables" / "lab" / "t")
    (lab / "latbench.toml").write_text('table = "tables/lab/t"\ndevice = "cpu"\nthreads = 1\n')
    shown = run_cli_json("lut", "show")
    assert shown["table"].endswith("tables/lab/t")
    [est] = run_cli_json("lut", "estimate", "tables/lab/t", "efficientformerv2_s0")
    assert est["latency_ms"] > 0


def test_pyproject_tool_table_and_precedence(lab, run_cli_json):
    synthetic_table().save(lab / "a")
    synthetic_table(scale=2.0).save(lab / "b")
    (lab / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.latbench]\ntable = "a"\n')
    assert run_cli_json("lut", "show")["table"].endswith("a")
    assert run_cli_json("lut", "show", "b")["table"].endswith("b")  # the command line wins
    assert _config.default("device") is None


def test_the_configured_device_and_threads_reach_the_runner(lab):
    import argparse

    from latbench.commands._runner import add_device_flag, add_runner_flags, runner_options

    (lab / "latbench.toml").write_text('device = "cpu"\nthreads = 2\n')
    p = argparse.ArgumentParser()
    add_device_flag(p)
    add_runner_flags(p)
    args = p.parse_args([])
    assert args.device == "cpu" and runner_options(args) == {"threads": 2}
    assert runner_options(p.parse_args(["--threads", "1"])) == {"threads": 1}


def test_a_table_is_measured_again_as_it_records_then_as_configured(lab, own_core):
    # `lut validate` / `lut check` / `lut build --upgrade` of a table on its own device: the flags
    # given, else the table's threads and pinning, else latbench.toml's (another device: the toml's).
    import argparse

    from latbench import api
    from latbench.commands._runner import add_runner_flags, device_options

    (lab / "latbench.toml").write_text('device = "cpu"\nthreads = 1\n')
    core, mask = own_core
    table = synthetic_table()
    table.meta.update(device_id="cpu", device={**table.device, "device_kind": "cpu", "threads": 2, "core_mask": None})
    with api.open_table_device(table) as r:
        assert (r.threads, r.cores) == (2, None)
    table.meta["device"] = {**table.device, "threads": 1, "core_mask": mask}
    with api.open_table_device(table) as r:
        assert (r.threads, r.cores) == (1, [core]) and r.describe()["core_mask"] == mask
    table.meta["device"] = {**table.device, "threads": 2, "core_mask": None}
    with api.open_table_device(table, "cpu", threads=1, core_mask=mask) as r:
        assert (r.threads, r.cores) == (1, [core])
    # Its two threads pinned to one core: refused, with the fix (device_runners.base.check_threads_fit).
    with pytest.raises(UsageError, match="--threads 2 on 1 pinned core"):
        api.open_table_device(table, core_mask=mask)
    with api.open_table_device(table, "litert") as r:  # not the table's device: nothing of it carries over
        assert r.threads == 1 and r.describe()["xnnpack"] is True
    p = argparse.ArgumentParser()
    add_runner_flags(p)
    # The command leaves the toml's threads to the API where the table has its own.
    assert device_options("cpu", p.parse_args([]), configured=False) == {}
    assert device_options("cpu", p.parse_args([])) == {"threads": 1}
    assert device_options("cpu", p.parse_args(["--threads", "2"]), configured=False) == {"threads": 2}


@pytest.mark.parametrize("text, needle", [
    ("colour = 'blue'\n", "unknown setting 'colour'"),
    ("threads = 'four'\n", "threads must be an integer"),
    ("threads = 0\n", "threads must be >= 1"),
    ("table = [\n", "not valid TOML"),
])
def test_a_bad_config_file_is_a_one_line_error(lab, run_cli, text, needle):
    (lab / "latbench.toml").write_text(text)
    code, _, err = run_cli("lut", "show")  # a command that reads the config
    assert code == 2 and needle in err and err.count("\n") == 1 and "latbench.toml" in err
    code, _, err = run_cli("profile", "efficientformerv2_s0", "--runs", "1")  # the threads default is read
    assert code == 2 and needle in err, err


@pytest.mark.parametrize("args", [["--help"], ["lut", "build", "--help"], ["models"]])
def test_a_bad_config_file_does_not_break_help_or_commands_that_do_not_read_it(lab, run_cli, args):
    (lab / "latbench.toml").write_text("table = [\n")
    code, out, err = run_cli(*args)
    assert code == 0 and "Traceback" not in err and out, err
