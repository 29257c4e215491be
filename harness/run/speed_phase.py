"""The speed phase of `harness run`: every sampling-speed measurement of the run, after every cell
has finished, one cell at a time with nothing else running.

Timing sampling inside a cell while another job trains on the same cores measured the other job
too (docs/benchmarks.md). Here each measurement runs alone, with the
run's `threads_per_job` torch threads, in the runner's own process (locally and under torchrun,
rank 0), or as one Slurm job after the cells' job array (harness.run.launchers.slurm). Each
sampler is timed in rounds until the last few agree (harness.engine.throughput.
measure_until_settled); its rows report the median and the spread.

* Which cells: a done `train` cell whose family has samplers to time (eval.sample_methods), on
  the weights its evaluation sampled with (EMA when evaluated, from the cell's newest
  checkpoint; the starting weights when it trained nothing), on its training device; a done
  `speed` cell, untrained on the CPU, at every `sampling_speed` batch size.
* Resumable: each cell's measurement goes atomically into `cells/<cell>/sampling_speed.json`
  (status, settings, rows); a measurement that is done with the current settings is not redone,
  a failed or missing one is tried again by the next run, and a cell that is run again drops its
  old one. `rebuild_shared_files` merges the rows into metrics.jsonl and summary.csv.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness import atomic
from harness.contract import SPEED_FILE
from harness.engine import checkpoint, throughput, weights
from harness.engine.sampling import samplers, sampling_speed_rows, speed_row
from harness.engine.train import resolve_device
from harness.experiment.schema import Cell
from harness.plain import to_plain
from harness.run import locks
from harness.run.cell import decorate, one_line, starting_models
from harness.run.console import say
from harness.run.results_folder import (CellContext, cell_dir, read_speed, read_status,
                                        rebuild_shared_files)
from models import registry


def measures_speed(cell: Cell, context: CellContext) -> bool:
    """Whether the cell has sampling-speed measurements (train cells with samplers to time,
    speed cells)."""
    if cell.kind == "train":
        return bool(samplers(registry.get(cell.family), cell.eval.sample_methods))
    if cell.kind == "speed" and context.sampling_speed is not None:
        return bool(samplers(registry.get(cell.family), tuple(context.sampling_speed.methods)))
    return False


def settings(cell: Cell, context: CellContext) -> dict:
    """What a cell's measurement depends on beyond its model: redone when these change."""
    if cell.kind == "speed":
        return {"sampling_speed": to_plain(context.sampling_speed)}
    keys = ("sample_batch_size", "sample_repeats", "sample_warmup", "sample_methods",
            "sample_spread_tolerance", "sample_window_rounds", "sample_max_rounds",
            "sample_max_s", "noise_seed")
    return {"eval": {key: to_plain(getattr(cell.eval, key)) for key in keys}}


def measured(cell: Cell, context: CellContext, root: Path) -> bool:
    record = read_speed(cell_dir(root, cell.name))
    return record.get("status") == "done" and record.get("settings") == settings(cell, context)


def pending(cells: list[Cell], context: CellContext, root: Path,
            assume_done: bool = False) -> list[Cell]:
    """Cells whose measurement is still to take: done (or, `assume_done`, about to run) cells
    with speed measurements and no finished record for the current settings."""
    return [cell for cell in cells if measures_speed(cell, context)
            and (assume_done or read_status(cell_dir(root, cell.name)).get("status") == "done")
            and not measured(cell, context, root)]


# --------------------------------------------------------------------------- measuring


def _sampling_model(cell: Cell, directory: Path) -> torch.nn.Module:
    """The weights the cell's evaluation sampled with, on its training device."""
    family = registry.get(cell.family)
    name = "ema" if "ema" in cell.eval.weights else cell.eval.weights[0]
    models, _ = starting_models(cell)
    model = models.get(name, models["raw"])
    saved = checkpoint.list_checkpoints(directory / "checkpoints")
    if saved:  # the trained weights (a zero-step cell keeps its starting ones)
        weights.load_weights(model, family, weights.read_weights_file(saved[-1][1]), name,
                             cell.model)
    return model.to(resolve_device(cell.train.device)).eval()


def _speed_cell_rows(cell: Cell, context: CellContext) -> list[dict]:
    family = registry.get(cell.family)
    speed = context.sampling_speed
    torch.manual_seed(cell.seed)
    model = family.build_model(cell.model_config).eval()
    channels, height, _ = family.image_shape(cell.model_config)
    rows = []
    for sampler in samplers(family, tuple(speed.methods)):
        kwargs = dict(sampler.kwargs)
        if sampler.temperature:
            kwargs["temperature"] = speed.temperature
        batch_sizes, repeats, warmup = speed.timing(sampler.method)
        for batch_size in batch_sizes:
            generator = torch.Generator().manual_seed(cell.seed)
            measurement = throughput.sampling_speed(
                model, batch_size, repeats, warmup, window=speed.window_rounds,
                tolerance=speed.spread_tolerance, max_rounds=speed.max_rounds,
                max_s=speed.max_s, generator=generator, **kwargs)
            row = speed_row(measurement, method=sampler.method, batch_size=batch_size,
                            image_size=height, repeats=repeats, image_channels=channels)
            if sampler.temperature:
                row["temperature"] = kwargs["temperature"]
            rows.append(row)
    return rows


def measure(cell: Cell, context: CellContext, directory: Path) -> list[dict]:
    """The cell's `sample_images_per_s` rows, decorated like its other rows."""
    if cell.kind == "speed":
        rows = _speed_cell_rows(cell, context)
    else:
        model = _sampling_model(cell, directory)
        image_size = registry.get(cell.family).image_shape(cell.model_config)[-1]
        rows = sampling_speed_rows(model, registry.get(cell.family), cell.eval, image_size)
    return [decorate(row, cell, context) for row in rows]


def _line(cell: Cell, row: dict) -> str:
    return (f"  {cell.name}: {row['method']} sampling, batch {row['batch_size']}: "
            f"{row['value']:,.2f} images/s (median of the last rounds, {row['rounds']} in all, "
            f"{row['min_images_per_s']:,.2f}-{row['max_images_per_s']:,.2f}, spread "
            f"{100 * row['spread_fraction']:.1f}%" + ("" if row["settled"] else
                                                     ", stopped by the round/time cap") + ")")


def _wait_for_other_runners(root: Path, cells: list[Cell], max_wait_s: float) -> None:
    """Wait (at most `max_wait_s`) until no cell of the run is held by another runner: a second
    `harness run` on the same folder may still be training one on these cores."""
    deadline = time.monotonic() + max_wait_s
    said = False
    while True:
        held = [c.name for c in cells if locks.held_elsewhere(cell_dir(root, c.name))]
        if not held:
            return
        if time.monotonic() > deadline:
            say(f"  speed phase: {', '.join(held)} still held by another runner after "
                f"{max_wait_s:.0f} s; measuring anyway")
            return
        if not said:
            say(f"  speed phase: waiting for another runner's {', '.join(held)} to end")
            said = True
        time.sleep(1.0)


def run_speed_phase(root: Path, cells: list[Cell], context: CellContext, threads: int,
                    summary_cells: list[Cell], summary_weights: str,
                    on_measure: Callable[[Cell], None] | None = None,
                    wait_for_others_s: float = 1800.0) -> list[str]:
    """Take every pending measurement of `cells`, one at a time in this process with `threads`
    torch threads; returns the names whose measurement failed (recorded, the others go on).

    Each measurement holds `<root>/.speed_guard` (one measurement at a time across runners) and
    the cell's lock, and first waits (up to `wait_for_others_s`; 0: not at all, as the Slurm job
    that starts after the array does) until no cell of `summary_cells` is held by another runner.
    `on_measure(cell)` is called just before each measurement (the tests watch the order)."""
    todo = pending(cells, context, root)
    if not todo:
        return []
    say(f"speed phase: {len(todo)} cell(s), one at a time, {threads} torch thread(s), no cell "
        "running")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    failed: list[str] = []
    try:
        warm_up(todo[0], context, root)
        for index, cell in enumerate(todo):
            with locks.guard(root, ".speed_guard"):
                if wait_for_others_s > 0:
                    _wait_for_other_runners(root, summary_cells, wait_for_others_s)
                _measure_locked(root, cell, context, index, len(todo), on_measure, failed)
            rebuild_shared_files(root, summary_cells, summary_weights)
    finally:
        torch.set_num_threads(previous)
    return failed


def warm_up(cell: Cell, context: CellContext, root: Path, min_s: float = 3.0) -> float:
    """Run the first cell's samplers untimed for about `min_s` seconds before any timing: the
    first measurement of a phase otherwise pays for the process's one-time costs (kernel
    selection and caches for these shapes, memory pages, the CPU's clock ramp) and read up to
    1.5x slower than identical cells measured after it. Returns the seconds spent; a failure
    here is left to the measurement itself to report."""
    start = time.perf_counter()
    try:
        if cell.kind == "speed":
            family = registry.get(cell.family)
            model = family.build_model(cell.model_config).eval()
            batch = min(context.sampling_speed.timing(s.method)[0][0]
                        for s in samplers(family, tuple(context.sampling_speed.methods)))
            methods = samplers(family, tuple(context.sampling_speed.methods))
        else:
            family = registry.get(cell.family)
            model = _sampling_model(cell, cell_dir(root, cell.name))
            batch = cell.eval.sample_batch_size
            methods = samplers(family, cell.eval.sample_methods)
        # the fastest sampler (cached before naive): the warm-up is about the process, not
        # about timing the slow one twice
        sampler = next((s for s in methods if s.method == "cached"), methods[0])
        generator = torch.Generator(device=throughput.model_device(model)).manual_seed(0)
        with torch.inference_mode():
            while time.perf_counter() - start < min_s:
                model.sample(batch, generator=generator, **sampler.kwargs)
    except Exception:  # noqa: BLE001 - the measurement that follows reports any failure
        pass
    return time.perf_counter() - start


def _measure_locked(root: Path, cell: Cell, context: CellContext, index: int, total: int,
                    on_measure, failed: list[str]) -> None:
    """Measure one cell under its lock and record it (`failed` gets its name on an error)."""
    directory = cell_dir(root, cell.name)
    lock = locks.CellLock(directory, root)
    if not lock.acquire():
        say(f"  {cell.name}: held by another runner; its speed is measured there")
        return
    try:
        if read_status(directory).get("status") != "done" \
                or measured(cell, context, root):
            return  # redone or measured by another runner since we looked
        say(f"speed [{index + 1}/{total}] {cell.name}")
        if on_measure is not None:
            on_measure(cell)
        start = time.perf_counter()
        record = {"settings": settings(cell, context)}
        try:
            rows = measure(cell, context, directory)
            record.update(status="done", error=None, rows=rows)
        except Exception as error:  # noqa: BLE001 - one failed timing is recorded
            rows = []
            record.update(status="failed", error=one_line(error), rows=[])
            failed.append(cell.name)
        record["wall_s"] = time.perf_counter() - start
        atomic.write_json(directory / SPEED_FILE, record)
        for row in rows:
            say(_line(cell, row))
        if record["status"] == "failed":
            say(f"  {cell.name}: speed measurement failed: {record['error']}")
    finally:
        lock.release()


__all__ = ["measure", "measures_speed", "pending", "run_speed_phase", "settings"]
