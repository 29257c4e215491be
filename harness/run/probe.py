"""The plan's measured probe: every model of distinct cost is built once, a few training steps at
the cell's batch size are timed after a warm-up step, plus one inference forward pass and the
sampling calls its evaluation makes (extrapolated from small sizes for an autoregressive model);
with `jobs` > 1 the probe runs in `jobs` processes at once, so memory-bandwidth and core
contention are in the figure. Its progress goes to stderr (harness.run.progress)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.engine import allocator
from harness.experiment.schema import Cell, SpeedSpec
from harness.run.progress import PhaseProgress
from models import registry


@dataclass
class Probe:
    """Measured (or FLOP-derived) costs of one model config at one thread count."""

    flops_per_image: float | None = None
    train_step_s: float | None = None       # one optimiser step at the train batch size
    forward_s_per_image: float | None = None  # inference forward, per image, at eval batch
    pass_s: dict = field(default_factory=dict)  # batch -> one inference forward of that batch
    naive_s: dict = field(default_factory=dict)  # batch -> one naive sample call (extrapolated)
    cached_s: dict = field(default_factory=dict)  # batch -> one cached sample call (extrapolated)


def config_key(cell: Cell) -> str:
    return repr((cell.family, cell.model_config))


def _timed(fn, threads: int) -> float:
    """Seconds `fn()` takes on cores of our own: min(wall time, CPU time / threads).

    On a machine shared with other work the wall clock measures the others too; this process's
    CPU time does not (with one thread it is what the wall clock would read on idle cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return min(time.perf_counter() - wall, (time.process_time() - cpu) / max(1, threads))


def _probe_one(family_name: str, config: Any, batch: int, eval_batch: int, steps: int,
               sample_batches: tuple[int, ...], naive_batches: tuple[int, ...],
               threads: int) -> Probe:
    family = registry.get(family_name)
    torch.manual_seed(0)
    model = family.build_model(config)
    channels, height, width = family.image_shape(config)
    images = torch.randint(0, 256, (max(batch, eval_batch), channels, height, width),
                           dtype=torch.uint8)
    probe = Probe()
    if steps > 0:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        model.train()

        def step():
            optimizer.zero_grad(set_to_none=True)
            model.loss(images[:batch])["loss_nats_per_dim"].mean().backward()
            optimizer.step()

        step()  # warms up allocators and kernels
        times = sorted(_timed(step, threads) for _ in range(steps))
        probe.train_step_s = times[len(times) // 2]
    model.eval()
    with torch.inference_mode():
        model.loss(images[:2])
        probe.forward_s_per_image = _timed(lambda: model.loss(images[:eval_batch]),
                                           threads) / eval_batch
        for b in sample_batches:
            one = images[:1].expand(b, -1, -1, -1).contiguous()
            probe.pass_s[b] = _timed(lambda: model.loss(one), threads)
            if family.autoregressive and family.resize is not None:
                if b in naive_batches:
                    probe.naive_s[b] = _sample_call_s(family, config, b, "naive", threads)
                probe.cached_s[b] = _sample_call_s(family, config, b, "cached", threads)
    return probe


def _sample_call_s(family: registry.Family, config: Any, batch: int, method: str,
                   threads: int) -> float:
    """Seconds of one autoregressive sample call at full size, extrapolated from the same
    architecture sampled at 4×4 and 8×8: a call makes S²·C steps, each costing a + b·S² (a fixed
    per-step overhead plus work over the S×S canvas; an upper bound for the cached sampler, whose
    steps touch a few rows); two sizes give a and b."""
    kwargs = family.sampler(method).kwargs
    per_step = {}
    for size in (4, 8):
        torch.manual_seed(0)
        small_config = family.resize(config, size)
        small = family.build_model(small_config).eval()
        channels = family.image_shape(small_config)[0]
        small.sample(batch, **kwargs)  # warm-up
        seconds = _timed(lambda m=small: m.sample(batch, **kwargs), threads)
        per_step[size] = seconds / (size * size * channels)
    slope = max(0.0, (per_step[8] - per_step[4]) / (64 - 16))
    base = max(0.0, per_step[4] - slope * 16)
    _, height, width = family.image_shape(config)
    return height * width * channels * (base + slope * height * width)


def _probe_all(tasks: list[tuple], threads: int, shown: tuple[tuple[str, float], ...] = ()
               ) -> list[Probe]:
    """Probe every task in turn; `shown` (one (label, weight) per task) prints the progress
    (in one of the processes when several probe at once)."""
    allocator.keep_freed_memory()  # as the cells will run (harness.run.cell)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    progress = PhaseProgress("probe", len(shown), sum(w for _, w in shown), verb="timed")
    try:
        probes = []
        for index, task in enumerate(tasks):
            probes.append(_probe_one(*task, threads))
            if shown:
                progress.advance(*shown[index])
        return probes
    finally:
        progress.close()
        torch.set_num_threads(previous)


def _probe_weight(task: tuple, flops_per_image: float | None) -> float:
    """A task's share of the probe's time, for the ETA: the images its timed passes push
    through the model (a training image costs about three forward ones) times its FLOPs."""
    _, _, batch, eval_batch, steps, sample_batches, _ = task
    images = 3 * batch * (steps + 1 if steps else 0) + eval_batch + 2 + sum(sample_batches)
    return images * (flops_per_image or 1.0)


def _eval_batch(cell: Cell) -> int:
    """The evaluation batch the cell will use on this machine (the evaluator's device default
    when the config leaves it open), at most 256 for the probe."""
    return min(cell.eval.batch_size_on("cuda" if torch.cuda.is_available() else "cpu"), 256)


def probe_models(cells: list[Cell], flops: dict[str, float], probe_steps: int, jobs: int,
                 threads: int, speed: SpeedSpec | None = None) -> dict[str, Probe]:
    """Probe each model of distinct cost once: configs with the same family, parameter count and
    FLOPs per image (e.g. one VDVAE at several effective depths) share one probe. With jobs > 1
    the probe runs in `jobs` processes at once, so contention between them is measured."""
    groups: dict[tuple, list[str]] = {}
    tasks: dict[tuple, tuple] = {}
    labels: dict[tuple, tuple[str, float]] = {}
    for cell in cells:
        if cell.kind not in ("train", "speed"):
            continue
        key = config_key(cell)
        batch = cell.train.batch_size if cell.kind == "train" else 1
        group = (cell.family, cell.params, flops.get(key), batch, cell.kind)
        if key not in groups.setdefault(group, []):
            groups[group].append(key)
        if group in tasks:
            continue
        if cell.kind == "speed":
            sample_batches = tuple(sorted(set(speed.batch_sizes) | set(speed.naive_batch_sizes)))
            naive_batches = tuple(speed.naive_batch_sizes)
        else:
            sample_batches = tuple(b for b in (cell.eval.sample_batch_size,
                                               cell.eval.n_grid_samples) if b)
            naive_batches = (cell.eval.sample_batch_size,)
        tasks[group] = (cell.family, cell.model_config, batch, _eval_batch(cell),
                        probe_steps if cell.kind == "train" and cell.train.max_steps != 0
                        else 0, sample_batches,
                        naive_batches)
        labels[group] = (f"{cell.name}, {cell.params:,} parameters" if cell.params else
                         cell.name, _probe_weight(tasks[group], flops.get(key)))
    if not tasks:
        return {}
    group_list, task_list = list(tasks), list(tasks.values())
    shown = tuple(labels[group] for group in group_list)
    jobs = min(jobs, len(cells))  # the runner never runs more cells at once than it has
    steps = f"{probe_steps} timed training step(s), " if probe_steps else ""
    PhaseProgress("probe", len(task_list)).start(
        f"timing {len(task_list)} model(s) for the estimate: {steps}an inference pass and "
        "sampling calls each" + (f", in {jobs} processes at once" if jobs > 1 else ""))
    if jobs <= 1:
        results = _probe_all(task_list, threads, shown)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = [pool.submit(_probe_all, task_list, threads, shown if index == 0 else ())
                       for index in range(jobs)]
            runs = [f.result() for f in futures]
        results = []
        for index in range(len(task_list)):
            samples = [run[index] for run in runs]
            merged = samples[0]
            for name in ("train_step_s", "forward_s_per_image"):
                values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
                setattr(merged, name, sum(values) / len(values) if values else None)
            merged.pass_s = {b: sum(s.pass_s[b] for s in samples) / len(samples)
                             for b in merged.pass_s}
            for name in ("naive_s", "cached_s"):
                setattr(merged, name, {b: sum(getattr(s, name)[b] for s in samples) / len(samples)
                                       for b in getattr(merged, name)})
            results.append(merged)
    probes: dict[str, Probe] = {}
    for group, probe in zip(group_list, results):
        for key in groups[group]:
            probes[key] = dataclasses.replace(probe, flops_per_image=flops.get(key))
    return probes
