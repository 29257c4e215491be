"""Sections that run the harness itself on synthetic images: the smoke experiment on the device
(`smoke`, through the `harness run` command, whose exit status counts), and the local launcher's
multi-GPU paths (`multi_gpu`, two or more GPUs): one cell on two GPUs under torchrun
(`gpus_per_cell: 2`), and two cells each on its own GPU (`runner.gpus` placement). Every cell
records the CUDA_VISIBLE_DEVICES and world size its process saw in provenance.json."""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpucheck import synthetic
from gpucheck.context import Context
from gpucheck.record import Record
from harness.errors import UserError

REPO = synthetic.REPO
MAX_BITS_PER_DIM = 16.0  # an 8-bit image costs at most ~8 bits/dim; past twice that is broken
# What the sample-quality study imports when it runs (harness.engine.quality_metrics).
QUALITY_MODULES = ("prdc", "sklearn")


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of `names` that cannot be imported in this process."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def summary_rows(results: Path) -> dict[str, dict]:
    try:
        with open(results / "summary.csv", newline="", encoding="utf-8") as handle:
            return {row["cell"]: row for row in csv.DictReader(handle)}
    except OSError:
        return {}


def provenance(results: Path, cell: str) -> dict:
    try:
        return json.loads((results / "cells" / cell / "provenance.json").read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def check_results(record: Record, results: Path, cells: list[str], prefix: str = "") -> None:
    """Every expected cell done with a finite, plausible test bits/dim in summary.csv."""
    rows = summary_rows(results)
    missing = [c for c in cells if c not in rows]
    record.check(f"{prefix}summary_lists_every_cell", not missing,
                 f"summary.csv lacks {missing}" if missing else f"{len(cells)} cells listed")
    not_done = {c: rows[c]["status"] for c in cells if c in rows and rows[c]["status"] != "done"}
    record.check(f"{prefix}every_cell_done", not not_done,
                 f"not done: {not_done}" if not_done else "every cell done")
    bad = {}
    for cell in cells:
        value = rows.get(cell, {}).get("test_bits_per_dim")
        if value in (None, ""):
            continue  # speed cells have no test figure
        number = float(value)
        if not (math.isfinite(number) and 0 < number < MAX_BITS_PER_DIM):
            bad[cell] = value
    record.check(f"{prefix}bits_per_dim_plausible", not bad,
                 f"test bits/dim outside (0, {MAX_BITS_PER_DIM:g}): {bad}" if bad
                 else "every test bits/dim finite and in range")


def smoke(record: Record, context: Context) -> None:
    from harness.experiment.load import load_experiment

    folder = context.folder("smoke")
    experiment = synthetic.smoke_experiment(folder)
    cells = [c.name for c in load_experiment(experiment).cells]
    results, log = folder / "results", folder / "harness_run.log"
    command = [sys.executable, "-m", "harness", "run", str(experiment), "--results",
               str(results), "--set", f"train.device={context.device}",
               "--set", "eval.sample_max_rounds=4"]
    missing = missing_modules(QUALITY_MODULES)
    if missing:  # every train cell would fail on the import; the study is not a CUDA path
        command += ["--set", "eval.quality_samples=0"]
        record.note(f"sample-quality study off (eval.quality_samples=0): it needs "
                    f"{', '.join(missing)}, not importable here")
    record.set("command", " ".join(command))
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": synthetic.python_path(REPO)},
                              check=False)
    record.figure("harness_run_s", time.perf_counter() - start, "s",
                  f"`harness run` of the smoke experiment ({len(cells)} cells, speed phase and "
                  "report) on synthetic images")
    record.check("harness_exit_status", done.returncode == 0,
                 f"`harness run` exited {done.returncode}; log {log}: {_tail(log)}")
    check_results(record, results, cells)
    record.check("report_written", (results / f"{experiment.stem}.pdf").is_file(),
                 f"{results / (experiment.stem + '.pdf')}")
    # train.device=cuda makes a cell fail where CUDA is missing; provenance names the device.
    devices = {provenance(results, c).get("device") for c in cells}
    on_device = devices != {"cpu"} if context.device == "cuda" else devices == {"cpu"}
    record.check("cells_ran_on_the_device", on_device,
                 f"train.device={context.device}; the cells' provenance names "
                 f"{sorted(map(str, devices))}")


# --------------------------------------------------------------------------- several GPUs


def _multi_gpu_experiment(folder: Path, name: str, depths: list[int], runner: dict,
                          device: str) -> Path:
    model = {"family": "vdvae", "preset": "fmnist_tiny",
             "sweep": {"grid": {"effective_depth": depths}}}
    return synthetic.smoke_experiment(
        folder, name=name, models={"vdvae": model}, codecs=[], sampling_speed=None,
        runner={"jobs": 2, "threads_per_job": 1, "estimate": "flops", "flops_per_s": 2.0e9,
                "report": False, **runner},
        train={"batch_size": 16, "max_steps": 3, "warmup_steps": 1,
               "checkpoint_every_steps": 2, "log_every_steps": 1, "progress": "lines",
               "device": device},
        eval={"batch_size": 64, "iw_k": 0, "sample_batch_size": 2, "sample_repeats": 1,
              "sample_warmup": 0, "sample_window_rounds": 2, "sample_max_rounds": 2,
              "n_grid_samples": 4, "quality_samples": 0})  # placement, not sample quality


def _run(record: Record, path: Path, results: Path, key: str) -> None:
    from harness.run.runner import run_experiment

    start = time.perf_counter()
    try:
        status = run_experiment(path, results_dir=results)
        detail = f"exited {status}"
    except UserError as error:
        status, detail = 2, f"refused: {error}"
    record.figure(f"{key}_run_s", time.perf_counter() - start, "s", f"`harness run` {path.name}")
    record.check(f"{key}_exit_status", status == 0, detail)


def multi_gpu(record: Record, context: Context) -> None:
    context.refuse_if_meaningless("multi_gpu", gpus=torch.cuda.device_count())
    folder = context.folder("multi_gpu")
    # One cell on GPUs 0 and 1 under torchrun: one process group of two ranks.
    pair = _multi_gpu_experiment(folder / "pair", "two_gpus_one_cell", [5],
                                 {"gpus": [0, 1], "gpus_per_cell": 2, "jobs": 1},
                                 context.device)
    _run(record, pair, folder / "pair" / "results", "two_gpu_cell")
    check_results(record, folder / "pair" / "results", ["vdvae_g05_s0"], "two_gpu_cell_")
    # Two cells at once, each in its own process on its own GPU, from runner.gpus [1, 0].
    apart = _multi_gpu_experiment(folder / "apart", "one_gpu_per_cell", [1, 5],
                                  {"gpus": [1, 0], "gpus_per_cell": 1, "jobs": 2},
                                  context.device)
    _run(record, apart, folder / "apart" / "results", "one_gpu_per_cell")
    check_results(record, folder / "apart" / "results", APART_CELLS, "one_gpu_per_cell_")
    check_placement(record, folder / "pair" / "results", folder / "apart" / "results")


APART_CELLS = ("vdvae_g01_s0", "vdvae_g05_s0")


def check_placement(record: Record, pair: Path, apart: Path) -> None:
    """What the cells' processes saw: the two-GPU cell's rank 0 a world of two on devices 0,1;
    the two one-GPU cells one device each, different ones."""
    seen = provenance(pair, "vdvae_g05_s0").get("machine", {})
    record.check("two_gpu_cell_ranks", seen.get("world_size") == 2
                 and seen.get("cuda_visible_devices") == "0,1",
                 f"rank 0 saw world size {seen.get('world_size')} and CUDA_VISIBLE_DEVICES "
                 f"{seen.get('cuda_visible_devices')!r} (expected 2 and '0,1')")
    visible = {cell: provenance(apart, cell).get("machine", {}).get("cuda_visible_devices")
               for cell in APART_CELLS}
    record.set("cuda_visible_devices_per_cell", visible)
    record.check("one_gpu_per_cell_placement", sorted(map(str, visible.values())) == ["0", "1"],
                 f"the cells' processes saw CUDA_VISIBLE_DEVICES {visible} (expected one '0' "
                 "and one '1')")
