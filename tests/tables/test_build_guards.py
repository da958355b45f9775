"""A build never loses a table: not one shared without its journal, not rows on disk, not the
settings its entries were measured with."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from scripted_device import ScriptedRunner

from latbench.blocks.configs import FFNConfig
from latbench.core.errors import UsageError
from latbench.tables.build import BuildSettings, TableBuilder

FFNS = [FFNConfig(224, 3, w, e) for w in (96, 120) for e in (3, 4)]


def settings(**changes) -> BuildSettings:
    return BuildSettings(min_separation_s=0.0, profile=False, calibration_models=0, jobs=1, **changes)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("guards") / "t"
    TableBuilder(ScriptedRunner(lambda key: 0.2), out, settings(runs=20)).build(FFNS)
    return out


def test_a_table_without_its_journal_is_refused_and_left_as_it_was(built, tmp_path):
    table = tmp_path / "shared"
    shutil.copytree(built, table)
    (table / "journal.sqlite").unlink()
    before = (table / "blocks.csv").read_bytes()
    with pytest.raises(UsageError, match="without its journal.sqlite.*--out.*--force"):
        TableBuilder(ScriptedRunner(lambda key: 0.2), table, settings()).build(FFNS[:1])
    assert (table / "blocks.csv").read_bytes() == before
    assert not (table / "journal.sqlite").exists()


def test_force_knowingly_starts_a_journal_less_table_over(built, tmp_path):
    table = tmp_path / "shared"
    shutil.copytree(built, table)
    (table / "journal.sqlite").unlink()
    TableBuilder(ScriptedRunner(lambda key: 0.2), table, settings(), force=True).build(FFNS[:1])
    assert FFNS[0].key in set(pd.read_csv(table / "blocks.csv")["key"])
    assert (table / "journal.sqlite").is_file()


def test_a_build_never_writes_fewer_rows_than_on_disk(built, tmp_path):
    table = tmp_path / "t"
    shutil.copytree(built, table)
    rows = len(pd.read_csv(table / "blocks.csv"))
    # The journal lost entries (an older copy put back): deriving would shrink the table.
    import sqlite3

    db = sqlite3.connect(table / "journal.sqlite")
    db.execute("DELETE FROM measurements WHERE key = ?", (FFNS[1].key,))
    db.commit()
    db.close()
    with pytest.raises(UsageError, match=f"holds {rows} blocks"):
        TableBuilder(ScriptedRunner(lambda key: 0.2), table, settings(runs=20)).build(FFNS[:1])
    assert len(pd.read_csv(table / "blocks.csv")) == rows


def test_a_build_that_measures_nothing_keeps_the_recorded_settings(built, tmp_path):
    table = tmp_path / "t"
    shutil.copytree(built, table)
    result = TableBuilder(ScriptedRunner(lambda key: 0.2), table, settings(runs=5)).build(FFNS)
    assert result.measured == []
    assert json.loads((table / "meta.json").read_text())["settings"]["runs"] == 20
    # A build that does measure records the settings it measured with.
    TableBuilder(ScriptedRunner(lambda key: 0.2), table, settings(runs=5)).build(FFNS + [FFNConfig(224, 3, 144, 3)])
    assert json.loads((table / "meta.json").read_text())["settings"]["runs"] == 5


def test_a_journal_that_cannot_be_written_is_one_line_saying_so():
    import sqlite3
    from pathlib import Path

    from latbench.core.errors import LatbenchError
    from latbench.measuring.journal import journal_error

    err = journal_error(Path("t/journal.sqlite"), sqlite3.OperationalError("attempt to write a readonly database"))
    assert isinstance(err, LatbenchError) and not isinstance(err, UsageError)
    assert "make its directory writable" in str(err) and "\n" not in str(err)
    damaged = journal_error(Path("t/journal.sqlite"), sqlite3.DatabaseError("file is not a database"))
    assert isinstance(damaged, UsageError) and "is damaged" in str(damaged)
