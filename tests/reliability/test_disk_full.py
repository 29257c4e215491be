"""Disk full while a checkpoint, a cell's result rows or the summary is written: one
line naming the file, the previous checkpoint and every earlier row intact, nothing half-written
left behind as if complete, and a re-run with space again finishes with the same results."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from harness.atomic import read_jsonl
from harness.cli import main
from harness.engine.checkpoint import read_checkpoint

from .enospc import DiskFull
from .smoke_sweep import deterministic_view, write_sweep


def harness(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", *args])
    return code, out.getvalue(), err.getvalue()


def leftovers(results) -> list:
    return [p for p in results.rglob("*.tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    path = write_sweep(folder, steps=6, every=2, report=False)
    assert harness(str(path), "--results", str(folder / "r"))[0] == 0
    return deterministic_view(folder / "r")


def test_disk_full_at_a_checkpoint(tmp_path, monkeypatch, reference):
    path = write_sweep(tmp_path, steps=6, every=2, report=False)
    results = tmp_path / "r"
    with monkeypatch.context() as patch:
        full = DiskFull(patch, "step-4.pt")  # the first cell's second checkpoint
        code, out, err = harness(str(path), "--results", str(results))
    assert full.failed and code == 1, (out, err)
    cell = results / "cells" / "vdvae_g01_s0"
    status = json.loads((cell / "status.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]
    assert str(cell / "checkpoints" / "step-4.pt") in status["error"]  # names the file
    assert read_checkpoint(cell / "checkpoints" / "step-2.pt")["step"] == 2  # previous intact
    assert not (cell / "checkpoints" / "step-4.pt").exists() and not leftovers(results)
    assert [r["step"] for r in read_jsonl(cell / "train_log.jsonl") if r["type"] == "train"] \
        == [1, 2, 3, 4]  # every row written before the failure is intact
    assert harness(str(path), "--results", str(results))[0] == 0  # space again: resumes
    assert deterministic_view(results) == reference


def test_other_errors_inside_an_atomic_write_keep_their_message(tmp_path):
    """Only system errors (an errno) are renamed to the target; an error raised by the code that
    fills the file (an interrupted download, say) keeps its own type and message."""
    from harness import atomic

    class Truncated(OSError):
        pass

    with pytest.raises(Truncated, match="connection closed after 100 bytes"):
        with atomic.atomic_open(tmp_path / "x.bin") as handle:
            handle.write(b"x" * 100)
            raise Truncated("connection closed after 100 bytes")
    assert list(tmp_path.iterdir()) == []
