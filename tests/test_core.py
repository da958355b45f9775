"""latbench.core: progress when stderr is not a terminal (a line every few seconds per phase, and its
completion); values in messages."""

from __future__ import annotations

import io

from latbench.core.progress import plain_progress


def test_plain_progress_writes_a_line_every_few_seconds_and_at_completion():
    now = [0.0]
    out = io.StringIO()
    progress = plain_progress(out, every_s=5.0, clock=lambda: now[0])
    for i in range(1, 101):  # 100 steps, 0.2 s apart: 20 s in all
        now[0] += 0.2
        progress("measure", i, 100, f"key-{i}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "latbench: measure 1/100 key-1"
    assert lines[-1] == "latbench: measure 100/100 key-100"
    assert 4 <= len(lines) <= 6  # about one per 5 s of a 20 s phase, not one per step
    progress("measure", 100, 100)  # the completion is written once
    progress("export", 3, 3)
    assert out.getvalue().splitlines()[-1] == "latbench: export 3/3"
    assert sum("100/100" in line for line in out.getvalue().splitlines()) == 1


def test_messages_show_numpy_numbers_as_plain_numbers():
    import numpy as np

    from latbench.core.text import shown

    assert shown(np.float64(-0.3)) == "-0.3" and shown(np.int64(7)) == "7" and shown("x") == "'x'"
