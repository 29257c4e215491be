"""Kill anywhere: the smoke sweep SIGKILLed at ≥ 20 seeded random moments — during
start-up, training, checkpoint writing, evaluation, the codec cell, the summary and the report —
and resumed each time. Every finished run's summary and per-image values equal an uninterrupted
run's exactly, and a cell that had finished before a kill is never trained again."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from harness import atomic
from harness.run.results_folder import SHARED_FILES

from .smoke_sweep import CELLS, deterministic_view, kill_group, start, write_sweep

KILLS = int(os.environ.get("HARNESS_RELIABILITY_KILLS", "24"))  # ≥ 20 in CI
SEED = 12


def _moments(results: Path, rng: random.Random):
    """A random moment of what is left to do: (phase, a predicate that turns true then). Files
    count only when written after this call (mtime), so leftovers of earlier runs do not fire."""
    since = time.time_ns()
    left = [n for n in CELLS if not _status_done(results / "cells" / n)]
    choices = []
    for name in left:
        cell = results / "cells" / name
        if name.startswith("codec"):
            choices.append(("codec cell", lambda c=cell: _new(c / "status.json", since)))
            continue
        steps = _lines(cell / "train_log.jsonl") + rng.randint(1, 8)
        choices += [
            ("training", lambda c=cell, k=steps: _lines(c / "train_log.jsonl") >= k),
            ("checkpoint write", lambda c=cell: (c / "checkpoints").is_dir()
             and any(_new(p, since) for p in (c / "checkpoints").glob("*step-*"))),
            ("evaluation", lambda c=cell: _new(c / "per_image_test_bits_per_dim_raw.npy", since)),
            ("cell files", lambda c=cell: _new(c / "samples.png", since)),
        ]
    choices += [("start-up/plan", lambda: _new(results / "plan.json", since)),
                ("summary", lambda: _new(results / "summary.csv", since)),
                ("report", lambda: _new(results / "tiny", since))]
    phase = rng.choice(sorted({name for name, _ in choices}))  # phases equally likely
    return rng.choice([c for c in choices if c[0] == phase])


def _new(path: Path, since_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= since_ns
    except OSError:
        return False


def _status_done(cell: Path) -> bool:
    try:
        return json.loads((cell / "status.json").read_text()).get("status") == "done"
    except (OSError, ValueError):
        return False


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _finished_cells(results: Path) -> dict[str, bytes]:
    """Cells done at this moment → the bytes of their training log and status."""
    done = {}
    for name in CELLS:
        cell = results / "cells" / name
        try:
            status = json.loads((cell / "status.json").read_text())
        except (OSError, ValueError):
            continue
        if status.get("status") == "done":
            log = cell / "train_log.jsonl"
            done[name] = (log.read_bytes() if log.exists() else b"") + (cell / "status.json"
                                                                         ).read_bytes()
    return done


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_identical_results(tmp_path, capsys):
    path = write_sweep(tmp_path, steps=12, every=3)
    began = time.perf_counter()
    baseline = start(path, tmp_path / "baseline")
    assert baseline.wait(timeout=300) == 0, baseline.stdout.read()
    full_s = time.perf_counter() - began
    expected = deterministic_view(tmp_path / "baseline")

    rng = random.Random(SEED)
    kills, phases, chains, cycles = 0, {}, 0, 0
    results = tmp_path / "chain0"
    frozen: dict[str, bytes] = {}
    killed_when_done = False
    while kills < KILLS or results.exists():
        cycles += 1
        assert cycles < 4 * KILLS, "the runs keep finishing before the kill"
        log = tmp_path / f"log{cycles}.txt"
        all_done = all(_status_done(results / "cells" / n) for n in CELLS)
        # Once every cell is done one more kill (summary/report) is enough: then let it finish.
        moment = None if kills >= KILLS or (all_done and killed_when_done) else _moments(results,
                                                                                        rng)
        killed_when_done = all_done and moment is not None
        extra_s = rng.uniform(0.0, 0.05)
        process = start(path, results, log=log)
        while moment is not None and process.poll() is None and not moment[1]():
            time.sleep(0.002)
        if moment is not None:
            time.sleep(extra_s)
        if moment is not None and process.poll() is None:
            kill_group(process)
            kills += 1
            phases[moment[0]] = phases.get(moment[0], 0) + 1
            for name, content in _finished_cells(results).items():
                frozen.setdefault(name, content)
            continue
        assert process.wait(timeout=300) == 0, log.read_text()
        # A finished chain: the same numbers as the uninterrupted run, nothing finished retrained.
        assert deterministic_view(results) == expected, f"chain {chains} differs"
        now = _finished_cells(results)
        for name, content in frozen.items():
            assert now[name] == content, f"{name} was run again after it had finished"
        leftovers = [p for p in results.rglob("*") if p.name.endswith(".tmp")]
        assert not [p for p in leftovers if not p.name.startswith(".")], leftovers
        # A killed writer's temporaries: the cell's next lock holder and the next rebuild of
        # the shared files delete theirs (only the report's may stay until it is rebuilt).
        assert not [p for p in leftovers if "cells" in p.relative_to(results).parts
                    or atomic.temporary_target(p.name) in SHARED_FILES], leftovers
        chains += 1
        frozen, killed_when_done = {}, False
        results = tmp_path / f"chain{chains}" if kills < KILLS else tmp_path / "done"
        if kills >= KILLS:
            break
    assert kills >= 20 and chains >= 1
    assert len(phases) >= 6, phases  # the kills landed in most phases of a run
    with capsys.disabled():
        print(f"\nkill anywhere: {kills} SIGKILLs in {cycles} runs, {chains} resumed sweeps "
              f"identical to the uninterrupted one; kills by phase {phases}; "
              f"uninterrupted run {full_s:.1f} s; {time.perf_counter() - began:.0f} s in all")
