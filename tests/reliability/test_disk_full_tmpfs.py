"""Disk full for real (root only): the smoke sweep writes its results into a small
tmpfs that fills up mid-run. The run ends with one line naming a file (exit 1 or 2, never a
traceback); every checkpoint left verifies, every cell marked done has rows that parse, and with
space again (the results moved to a roomy folder) a re-run finishes the sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from harness.atomic import read_jsonl
from harness.engine.checkpoint import read_checkpoint

from .smoke_sweep import deterministic_view, start, write_sweep

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                                reason="needs root to mount a tmpfs")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_filesystem_that_fills_up_mid_sweep(tmp_path, small_disk):
    path = write_sweep(tmp_path, steps=8, every=2, report=False)
    reference = start(path, tmp_path / "reference")
    assert reference.wait(timeout=300) == 0
    results = small_disk / "r"
    process = start(path, results)
    out = process.communicate(timeout=300)[0].decode()
    assert process.returncode in (1, 2), out
    assert "Traceback" not in out and "No space left on device" in out, out
    for checkpoint in results.glob("cells/*/checkpoints/step-*.pt"):
        read_checkpoint(checkpoint)  # raises if any checkpoint left is not whole
    for status_file in results.glob("cells/*/status.json"):
        status = json.loads(status_file.read_text())
        if status["status"] == "done":
            assert read_jsonl(status_file.parent / "metrics.jsonl")
    roomy = tmp_path / "roomy"
    shutil.copytree(results, roomy, symlinks=True)
    again = start(path, roomy)
    assert again.wait(timeout=300) == 0, again.stdout.read().decode()
    assert deterministic_view(roomy) == deterministic_view(tmp_path / "reference")
