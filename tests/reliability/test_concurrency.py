"""Concurrency: three runners started at once on one experiment and one results
folder run every cell exactly once and leave the summary a single runner leaves; a runner
SIGKILLed while it holds a cell's lock leaves a lock that exactly one later runner takes over."""

from __future__ import annotations

import shutil

import pytest

from harness.atomic import read_jsonl

from .smoke_sweep import TRAIN_CELLS, deterministic_view, kill_group, start, wait_for, write_sweep


def _train_steps(results, name):
    return [r["step"] for r in read_jsonl(results / "cells" / name / "train_log.jsonl")
            if r["type"] == "train"]


def _started(outputs) -> list[str]:
    return [line.split()[1] for out in outputs for line in out.splitlines()
            if line.startswith("→ ")]


@pytest.mark.slow
def test_three_runners_at_once_run_each_cell_once(tmp_path):
    path = write_sweep(tmp_path, steps=6, every=2, report=False)
    reference = start(path, tmp_path / "single")
    assert reference.wait(timeout=300) == 0
    results = tmp_path / "shared"
    runners = [start(path, results) for _ in range(3)]
    outputs = [r.communicate(timeout=300)[0].decode() for r in runners]
    assert [r.returncode for r in runners] == [0, 0, 0], outputs
    started = _started(outputs)
    assert sorted(started) == sorted(["codec_png", *TRAIN_CELLS]), outputs  # once each
    for name in TRAIN_CELLS:
        assert _train_steps(results, name) == [1, 2, 3, 4, 5, 6]  # trained once, not twice
    assert deterministic_view(results) == deterministic_view(tmp_path / "single")
    assert not list(results.glob("cells/*/lock"))


@pytest.mark.slow
def test_a_dead_holders_lock_is_taken_over_by_exactly_one_runner(tmp_path):
    path = write_sweep(tmp_path, steps=30, every=5, report=False)
    assert start(path, tmp_path / "single").wait(timeout=300) == 0
    results = tmp_path / "shared"
    holder = start(path, results)
    wait_for(lambda: any(results.glob("cells/*/checkpoints/step-10.pt")))
    locked = [p.parent.name for p in results.glob("cells/*/lock")]
    kill_group(holder)  # SIGKILL: the lock file stays, its pid is dead
    assert len(locked) == 1
    runners = [start(path, results) for _ in range(2)]
    outputs = [r.communicate(timeout=300)[0].decode() for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outputs
    reclaims = [line for out in outputs for line in out.splitlines() if "reclaimed the lock" in line]
    assert len(reclaims) == 1 and locked[0] in reclaims[0], outputs
    started = _started(outputs)
    assert sorted(started) == sorted(["codec_png", *TRAIN_CELLS]), outputs
    steps = _train_steps(results, locked[0])
    assert sorted(set(steps)) == list(range(1, 31)) and steps[-1] == 30
    assert deterministic_view(results) == deterministic_view(tmp_path / "single")
    shutil.rmtree(tmp_path / "single")
