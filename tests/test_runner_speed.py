"""The speed phase of `harness run`: sampling speed measured after every cell has ended, one cell
at a time, resumable, with its spread in the rows (harness.run.speed_phase)."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest

from test_runner import data_dir, write_experiment  # noqa: F401 - data_dir is a fixture

from harness.atomic import read_jsonl
from harness.contract import SPEED_FILE
from harness.run import speed_phase, status
from harness.run.runner import run_experiment

MODEL_CELLS = ("vdvae_g01_s0", "vdvae_g05_s0")


def _parallel(path):
    """The tiny experiment with two cells at a time, as runner.jobs: 2 runs the real ones."""
    path.write_text(path.read_text().replace("  jobs: 1\n", "  jobs: 2\n"))
    return path


def test_speed_rows_come_from_a_phase_after_every_cell(tmp_path, data_dir, monkeypatch,  # noqa: F811
                                                       capsys):
    path = _parallel(write_experiment(tmp_path, data_dir))
    results = tmp_path / "results"
    seen = []
    measure = speed_phase.measure

    def watched(cell, context, directory):
        # Nothing else runs: every cell has ended and no cell is locked but the measured one.
        statuses = {p.parent.name: json.loads(p.read_text())["status"]
                    for p in (results / "cells").glob("*/status.json")}
        locked = sorted(p.parent.name for p in (results / "cells").glob("*/lock"))
        speeds = {r["cell"]: r["speed"] for r in status.cell_states(results)}
        with contextlib.redirect_stdout(io.StringIO()):
            assert status.print_status(results) == 1  # not complete while timings are left
        seen.append((cell.name, statuses, locked, speeds))
        return measure(cell, context, directory)

    monkeypatch.setattr(speed_phase, "measure", watched)
    assert run_experiment(path, results_dir=results) == 0
    out = capsys.readouterr().out
    assert "speed phase: sampling speed of 2 cell(s) after every cell has finished" in out
    assert sorted(name for name, *_ in seen) == sorted(MODEL_CELLS)  # codecs do not sample
    for index, (name, statuses, locked, speeds) in enumerate(seen):
        assert statuses == dict.fromkeys(list(MODEL_CELLS) + ["codec_png"], "done")
        assert locked == [name]
        # `harness status` meanwhile: this one timing, the earlier timed, the rest queued.
        earlier = {n for n, *_ in seen[:index]}
        assert speeds == {"codec_png": "-", name: "timing",
                          **{n: "timed" if n in earlier else "queued"
                             for n in MODEL_CELLS if n != name}}
    assert status.print_status(results) == 0
    table = capsys.readouterr().out
    assert "speed phase: 2 of 2 timed" in table
    assert {line.split()[0]: line.split()[2] for line in table.splitlines()[1:-1]} == \
        {"codec_png": "-", **dict.fromkeys(MODEL_CELLS, "timed")}
    # The phase's lines come after every cell's own line.
    lines = out.splitlines()
    last_cell = max(i for i, line in enumerate(lines) if line.startswith("[3/3]"))
    first_speed = min(i for i, line in enumerate(lines) if line.startswith("speed ["))
    assert last_cell < first_speed

    metrics = read_jsonl(results / "metrics.jsonl")
    speed = [r for r in metrics if r["metric"] == "sample_images_per_s"]
    assert sorted(r["cell"] for r in speed) == sorted(MODEL_CELLS)
    for row in speed:
        assert row["min_images_per_s"] <= row["value"] <= row["max_images_per_s"]
        assert row["spread_fraction"] >= 0 and row["rounds"] >= 1 and row["repeats"] == 1
        assert row["method"] == "ancestral" and row["batch_size"] == 2
        assert row["experiment"] == "tiny" and row["dataset"] == "mnist"
    for name in MODEL_CELLS:  # the cell's own rows hold no timing taken while others trained
        own = read_jsonl(results / "cells" / name / "metrics.jsonl")
        assert not [r for r in own if r["metric"] == "sample_images_per_s"]
    with open(results / "summary.csv", newline="") as handle:
        summary = {r["cell"]: r for r in csv.DictReader(handle)}
    for row in speed:
        assert float(summary[row["cell"]]["sample_images_per_s"]) == row["value"]


@pytest.mark.slow
def test_speed_phase_is_resumable_and_not_redone(tmp_path, data_dir, monkeypatch,  # noqa: F811
                                                 capsys):
    path = write_experiment(tmp_path, data_dir)
    results = tmp_path / "results"
    measure = speed_phase.measure
    calls = []
    failures = ["vdvae_g05_s0"]  # its first measurement fails

    def failing_once(cell, context, directory):
        calls.append(cell.name)
        if cell.name in failures:
            failures.remove(cell.name)
            raise RuntimeError("timer broke")
        return measure(cell, context, directory)

    monkeypatch.setattr(speed_phase, "measure", failing_once)
    assert run_experiment(path, results_dir=results) == 1  # a failed measurement fails the run
    record = json.loads((results / "cells" / "vdvae_g05_s0" / SPEED_FILE).read_text())
    assert record["status"] == "failed" and "timer broke" in record["error"]
    done = (results / "cells" / "vdvae_g01_s0" / SPEED_FILE).read_bytes()
    capsys.readouterr()

    calls.clear()
    assert run_experiment(path, results_dir=results) == 0  # only the failed one again
    assert calls == ["vdvae_g05_s0"]
    assert (results / "cells" / "vdvae_g01_s0" / SPEED_FILE).read_bytes() == done
    assert "1 already measured" in capsys.readouterr().out

    calls.clear()
    assert run_experiment(path, results_dir=results, dry_run=True) == 0
    assert "speed phase: sampling speed of 0 cell(s)" in capsys.readouterr().out
    assert run_experiment(path, results_dir=results) == 0
    assert calls == []  # nothing redone
    speed = [r for r in read_jsonl(results / "metrics.jsonl")
             if r["metric"] == "sample_images_per_s"]
    assert sorted(r["cell"] for r in speed) == sorted(MODEL_CELLS)


@pytest.mark.slow
def test_changed_stopping_rule_remeasures_without_rerunning_the_cell(tmp_path,
                                                                      data_dir):  # noqa: F811
    path = write_experiment(tmp_path, data_dir)
    results = tmp_path / "results"
    assert run_experiment(path, results_dir=results) == 0
    steps_before = (results / "cells" / "vdvae_g01_s0" / "train_log.jsonl").read_bytes()
    assert run_experiment(path, results_dir=results,
                          overrides=["eval.sample_spread_tolerance=0.5"]) == 0
    assert (results / "cells" / "vdvae_g01_s0" / "train_log.jsonl").read_bytes() == steps_before
    record = json.loads((results / "cells" / "vdvae_g01_s0" / SPEED_FILE).read_text())
    assert record["settings"]["eval"]["sample_spread_tolerance"] == 0.5
