"""A damaged results folder: a cell's result file cut mid-row or short of rows, a cell
folder holding a checkpoint but no result, a truncated shared metrics.jsonl or summary.csv. Each
is detected on the next run: that cell is redone (the others untouched), the shared files and the
report are rebuilt, and the results equal the undamaged run's."""

from __future__ import annotations

import contextlib
import io
import shutil

import pytest

from harness.cli import main

from .smoke_sweep import CELLS, deterministic_view, write_sweep

VICTIM = "vdvae_g05_s0"


def run(path, results) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["run", str(path), "--results", str(results)])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("undamaged")
    path = write_sweep(folder, steps=6, every=2, report=True)
    code, out = run(path, folder / "r")
    assert code == 0, out
    return path, folder / "r", deterministic_view(folder / "r")


def _cut_mid_row(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - len(data.splitlines()[-1]) // 2 - 1])


def _drop_last_row(file):
    lines = file.read_bytes().splitlines(keepends=True)
    file.write_bytes(b"".join(lines[:-1]))


def _checkpoint_but_no_result(cell):
    (cell / "metrics.jsonl").unlink()
    (cell / "status.json").unlink()


DAMAGE = {
    "cell rows cut mid-row": (VICTIM, lambda r: _cut_mid_row(r / "cells" / VICTIM / "metrics.jsonl")),
    "cell rows one short": (VICTIM, lambda r: _drop_last_row(r / "cells" / VICTIM / "metrics.jsonl")),
    "checkpoint, no result": (VICTIM, lambda r: _checkpoint_but_no_result(r / "cells" / VICTIM)),
    "shared metrics.jsonl cut": (None, lambda r: _cut_mid_row(r / "metrics.jsonl")),
    "summary.csv cut mid-row": (None, lambda r: _cut_mid_row(r / "summary.csv")),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_detected_and_only_that_cell_redone(tmp_path, undamaged, damage):
    path, clean, expected = undamaged
    results = tmp_path / "r"
    shutil.copytree(clean, results)
    victim, hurt = DAMAGE[damage]
    hurt(results)
    untouched = {name: (results / "cells" / name / "status.json").read_bytes()
                 for name in CELLS if name != victim}
    report = results / "tiny.pdf"
    report_before = report.stat().st_mtime_ns
    code, out = run(path, results)
    assert code == 0, out
    started = [line.split()[1] for line in out.splitlines() if line.startswith("→ ")]
    assert started == ([victim] if victim else []), out
    for name, status in untouched.items():
        assert (results / "cells" / name / "status.json").read_bytes() == status, name
    assert deterministic_view(results) == expected
    assert report.stat().st_mtime_ns > report_before  # the report was rebuilt
