"""Disk full while a cell's result rows or the summary is written: one line naming the
file, exit 2, no traceback; every done cell's rows parse, no half-written result, and a re-run
finishes with the uninterrupted results."""

from __future__ import annotations

import json

import pytest

from harness.atomic import read_jsonl

from .enospc import DiskFull
from .smoke_sweep import deterministic_view, write_sweep
from .test_disk_full import harness, leftovers, reference  # noqa: F401 - the fixture


@pytest.mark.parametrize("target, after", [("metrics.jsonl", 0), ("metrics.jsonl", 1),
                                           ("summary.csv", 1)])
def test_disk_full_at_a_result_file(tmp_path, monkeypatch, reference, target, after):
    path = write_sweep(tmp_path, steps=6, every=2, report=False)
    results = tmp_path / "r"
    with monkeypatch.context() as patch:
        full = DiskFull(patch, target, after=after)
        code, out, err = harness(str(path), "--results", str(results))
    assert full.failed, (out, err)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0], (out, err)
    assert "Traceback" not in err + out
    failed_file = full.failed[0].replace(".tmp", "")
    named = [str(results / target)] + [str(results / "cells" / c / target)
                                       for c in ("vdvae_g01_s0", "vdvae_g05_s0", "codec_png")]
    assert any(f"error: {name}: " in lines[0] for name in named), lines[0]
    assert not leftovers(results), failed_file
    for cell in (results / "cells").iterdir():
        status = json.loads((cell / "status.json").read_text())
        rows = cell / "metrics.jsonl"
        if status["status"] == "done":  # complete means complete: its rows parse
            assert rows.is_file() and read_jsonl(rows)
        else:
            assert not rows.exists()  # no half-written result left as if complete
    if (results / "summary.csv").exists():
        assert (results / "summary.csv").read_text().startswith("cell,")
    assert harness(str(path), "--results", str(results))[0] == 0
    assert deterministic_view(results) == reference
