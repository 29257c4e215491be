"""The plan `harness run` prints before running: cells, parameters, FLOPs, estimated time.

Times come from a quick measured probe (default): every distinct model is built once, a few
training steps at the cell's batch size are timed after a warm-up step, plus one inference
forward pass; with `jobs` > 1 the probe runs in `jobs` processes at once, so memory-bandwidth
and core contention are in the figure. Alternatively (`runner.estimate: flops`) times follow from
FLOPs at a stated sustained rate (`runner.flops_per_s`): training ≈ 3 × forward FLOPs per image.
The total is the makespan of the cells over `jobs` workers, longest first (the order the runner
uses), plus the speed phase: every sampling-speed measurement, one after another once the cells
have finished (harness.run.speed_phase), estimated at the fewest rounds its rule allows.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.engine import allocator, budget, throughput
from harness.engine.config import TrainConfig
from harness.engine.evaluate import SAMPLE_CHUNK, chosen_studies, sample_set_size
from harness.engine.sampling import samplers
from harness.engine.studies import StudyCost
from harness.experiment.schema import Cell, ExperimentConfig, SpeedSpec
from models import registry

# A cell's fixed costs that the probe does not see: process start, imports, data loading,
# writing checkpoints, the FLOP count. Seconds.
OVERHEAD_S = {"train": 8.0, "speed": 3.0, "codec": 2.0}
# Encoding time per image at the best settings (measured on Fashion-MNIST, 1 core): seconds per
# 1,000 dimensions (PNG ~0.2 ms, WebP method 6 ~9 ms per 784-pixel image).
CODEC_S_PER_KDIM = {"png": 0.0003, "webp": 0.012}


# Assumed speed-up of the cached PixelCNN sampler over the naive one (not probed: one cached
# call costs as much as the rest of the probe): the sampling benchmark's 49× at 28×28×1, batch 16
# (the default sample batch), one thread, rounded (docs/benchmarks.md).
CACHED_SPEEDUP = 50.0


@dataclass
class Probe:
    """Measured (or FLOP-derived) costs of one model config at one thread count."""

    flops_per_image: float | None = None
    train_step_s: float | None = None       # one optimiser step at the train batch size
    forward_s_per_image: float | None = None  # inference forward, per image, at eval batch
    pass_s: dict = field(default_factory=dict)  # batch -> one inference forward of that batch
    naive_s: dict = field(default_factory=dict)  # batch -> one naive sample call (extrapolated)
    cached_s: dict = field(default_factory=dict)  # batch -> one cached sample call (extrapolated)


@dataclass
class CellEstimate:
    name: str
    kind: str
    params: int | None
    flops_per_image: float | None
    steps: int | None
    seconds: float
    detail: str = ""
    peak_memory_bytes: int | None = None  # expected, for a training step (train cells)
    speed_s: float = 0.0  # its sampling-speed measurement, in the speed phase (not `seconds`)
    phases: dict = field(default_factory=dict)  # train cells: "train" and each study, seconds


@dataclass
class Plan:
    experiment: str
    cells: list[CellEstimate]
    jobs: int
    threads: int
    total_s: float  # the cells' makespan plus the speed phase
    basis: str
    speed_phase_s: float = 0.0  # every sampling-speed measurement, one after another

    def record(self) -> dict:
        return {"experiment": self.experiment, "jobs": self.jobs,
                "threads_per_job": self.threads, "estimated_total_s": self.total_s,
                "estimated_speed_phase_s": self.speed_phase_s,
                "estimate_basis": self.basis,
                "estimates": [dataclasses.asdict(c) for c in self.cells]}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds / 86400:.1f} days"


def fmt_bytes(count: int | None) -> str:
    """'1.2 GiB', '310 MiB'; '' for None."""
    if count is None:
        return ""
    if count >= 2 ** 30:
        return f"{count / 2 ** 30:.1f} GiB"
    return f"{count / 2 ** 20:.0f} MiB"


def train_steps(train: TrainConfig, n_train: int | None) -> int | None:
    """Optimiser steps a TrainConfig will run (None when only a wall-clock budget bounds it)."""
    return budget.total_steps(train, budget.steps_per_epoch(train, n_train))


# --------------------------------------------------------------------------- probing


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


def _probe_all(tasks: list[tuple], threads: int) -> list[Probe]:
    allocator.keep_freed_memory()  # as the cells will run (harness.run.cell)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [_probe_one(*task, threads) for task in tasks]
    finally:
        torch.set_num_threads(previous)


def _eval_batch(cell: Cell) -> int:
    """The evaluation batch the cell will use on this machine (the evaluator's device default
    when the config leaves it open), at most 256 for the probe."""
    return min(cell.eval.batch_size_on("cuda" if torch.cuda.is_available() else "cpu"), 256)


def config_key(cell: Cell) -> str:
    return repr((cell.family, cell.model_config))


def flops_per_config(cells: list[Cell]) -> dict[str, float]:
    """Forward FLOPs per image of each distinct model config (one batch-1 pass each)."""
    found: dict[str, float] = {}
    for cell in cells:
        key = config_key(cell)
        if cell.kind == "codec" or key in found:
            continue
        family = registry.get(cell.family)
        shape = (1,) + tuple(family.image_shape(cell.model_config))
        try:  # shapes are all the counter needs: no weights allocated, no arithmetic done
            with torch.device("meta"):
                model = family.build_model(cell.model_config)
                images = torch.zeros(shape, dtype=torch.uint8)
            found[key] = throughput.flops_per_image(model, images)
        except Exception:  # noqa: BLE001 - an op without a meta kernel: count on real tensors
            torch.manual_seed(0)
            model = family.build_model(cell.model_config)
            found[key] = throughput.flops_per_image(model, torch.zeros(shape, dtype=torch.uint8))
    return found


def memory_per_cell(cells: list[Cell]) -> dict[str, int]:
    """Expected peak memory of each train cell's training step (weights, gradients, AdamW, EMA
    and the activations kept for backward at its batch size and activation checkpointing),
    measured on the meta device: no weights allocated, no arithmetic done."""
    found: dict[tuple, int] = {}
    memory = {}
    for cell in cells:
        if cell.kind != "train" or cell.train.max_steps == 0:  # zero steps: evaluation only
            continue
        key = (config_key(cell), cell.train.batch_size, cell.train.activation_checkpointing)
        if key not in found:
            family = registry.get(cell.family)
            with torch.device("meta"):
                model = family.build_model(cell.model_config)
                images = torch.zeros((cell.train.batch_size,)
                                     + tuple(family.image_shape(cell.model_config)),
                                     dtype=torch.uint8)
            if cell.train.activation_checkpointing:
                model.use_activation_checkpointing(True)
            found[key] = throughput.training_memory_bytes(model, images)
        memory[cell.name] = found[key]
    return memory


def probe_models(cells: list[Cell], flops: dict[str, float], probe_steps: int, jobs: int,
                 threads: int, speed: SpeedSpec | None = None) -> dict[str, Probe]:
    """Probe each model of distinct cost once: configs with the same family, parameter count and
    FLOPs per image (e.g. one VDVAE at several effective depths) share one probe. With jobs > 1
    the probe runs in `jobs` processes at once, so contention between them is measured."""
    groups: dict[tuple, list[str]] = {}
    tasks: dict[tuple, tuple] = {}
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
    if not tasks:
        return {}
    group_list, task_list = list(tasks), list(tasks.values())
    if jobs <= 1:
        results = _probe_all(task_list, threads)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = [pool.submit(_probe_all, task_list, threads) for _ in range(jobs)]
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


# --------------------------------------------------------------------------- estimating


def estimate_cell(cell: Cell, probe: Probe | None, experiment: ExperimentConfig,
                  n_train: int | None, n_test: int | None, image_dims: int | None,
                  flops_per_s: float | None) -> CellEstimate:
    if cell.kind == "codec":
        dims = (n_test or 10_000) * (image_dims or 784)
        seconds = OVERHEAD_S["codec"] + CODEC_S_PER_KDIM[cell.model] * dims / 1000
        return CellEstimate(cell.name, "codec", None, None, None, seconds,
                            f"{n_test or '?'} images")
    family = registry.get(cell.family)
    autoregressive = family.autoregressive
    flops = probe.flops_per_image if probe else None
    forward_s = probe.forward_s_per_image if probe else None
    if flops_per_s and flops:
        forward_s = flops / flops_per_s
    step_s = probe.train_step_s if probe else None
    if flops_per_s and flops and cell.kind == "train":
        step_s = 3 * flops * cell.train.batch_size / flops_per_s
    if forward_s is None:
        forward_s = (step_s / cell.train.batch_size / 3) if step_s else 0.0
    dims = image_dims or 0
    pass_s = (lambda b: probe.pass_s.get(b, b * forward_s)) if probe else (lambda b: b * forward_s)

    def sample_call_s(method: str, b: int) -> float:
        if not autoregressive:
            return b * forward_s
        if method == "naive":
            if probe is not None and b in probe.naive_s:
                return probe.naive_s[b]
            return dims * pass_s(b)  # an upper bound: a loss pass evaluates the output head
            # at every pixel, the naive sampler at one
        if probe is not None and b in probe.cached_s:
            return probe.cached_s[b]
        if probe is not None and probe.cached_s:  # per image as at the largest probed batch
            probed = max(probe.cached_s)
            return probe.cached_s[probed] * b / probed
        return dims * pass_s(b) / CACHED_SPEEDUP

    seconds = OVERHEAD_S[cell.kind]
    phases: dict[str, float] = {}
    speed_s = 0.0  # sampling-speed timing, in the run's speed phase after the cells
    steps = None
    if cell.kind == "train":
        steps = train_steps(cell.train, n_train)
        evaluation = cell.eval
        train_s = (steps or 0) * (step_s or 0.0)
        if cell.train.max_wall_s:
            train_s = min(train_s, cell.train.max_wall_s)
        methods = [s.method for s in samplers(family, evaluation.sample_methods)]
        for method in methods:  # in the speed phase: at least the window's rounds
            speed_s += min(evaluation.sample_max_s,
                           (evaluation.sample_window_rounds * evaluation.sample_repeats
                            + evaluation.sample_warmup)
                           * sample_call_s(method, evaluation.sample_batch_size))
        fastest = "cached" if "cached" in methods else (methods[0] if methods else None)

        def draw_s(n: int) -> float:  # n samples in calls of at most SAMPLE_CHUNK
            if fastest is None or n <= 0:
                return 0.0
            full, rest = divmod(n, SAMPLE_CHUNK)
            return full * sample_call_s(fastest, SAMPLE_CHUNK) + (
                sample_call_s(fastest, rest) if rest else 0.0)

        phases = {"train": train_s, **study_estimates(
            family, evaluation, StudyCost(n_test=n_test or 0, forward_s=forward_s,
                                          pass_s=pass_s, sample_call_s=draw_s,
                                          n_train=n_train))}
        eval_s = sum(v for k, v in phases.items() if k != "train")
        seconds += train_s + eval_s
        detail = (f"train {fmt_duration(train_s)} ({1 / step_s * cell.train.batch_size:,.0f} "
                  f"images/s) + eval {fmt_duration(eval_s)}" if step_s else "")
    else:
        speed = experiment.sampling_speed
        methods = [s.method for s in samplers(family, tuple(speed.methods))]
        timings = 0
        for method in methods:
            batch_sizes, repeats, warmup = speed.timing(method)
            speed_s += sum(min(speed.max_s, (speed.window_rounds * repeats + warmup)
                               * sample_call_s(method, b)) for b in batch_sizes)
            timings += len(batch_sizes)
        detail = f"{timings} timings in the speed phase"
    return CellEstimate(cell.name, cell.kind, cell.params, flops, steps, seconds, detail,
                        speed_s=speed_s, phases=phases)


def study_estimates(family: registry.Family, evaluation, cost: StudyCost) -> dict[str, float]:
    """Seconds of each study that runs for `family` (a weights study once per distinct weights
    name), and of drawing the shared sample set ("sample set")."""
    running, _ = chosen_studies(family, evaluation)
    out: dict[str, float] = {}
    for study in running:
        times = len(evaluation.weights) if study.scope == "weights" else 1
        out[study.name] = times * study.estimate_s(cost, evaluation)
    n_samples = sample_set_size(running, evaluation, cost.n_test)
    if n_samples:
        out["sample set"] = cost.sample_call_s(n_samples)
    return out


def makespan(durations: list[float], jobs: int) -> float:
    """Wall time of running jobs longest-first on `jobs` workers (greedy list scheduling)."""
    workers = [0.0] * max(1, jobs)
    for duration in sorted(durations, reverse=True):
        workers[workers.index(min(workers))] += duration
    return max(workers)


def make_plan(experiment: ExperimentConfig, cells: list[Cell], jobs: int, threads: int,
              n_train: int | None,
              n_test: int | None, image_dims: int | None) -> Plan:
    runner = experiment.runner
    flops_per_s = runner.flops_per_s if runner.estimate == "flops" else None
    probe_steps = runner.probe_steps if runner.estimate == "probe" else 0
    start = time.perf_counter()
    flops = flops_per_config(cells)
    # The FLOP-rate estimate needs no timing at all (and a paper-size model is slow on a CPU).
    probes = {} if flops_per_s else probe_models(cells, flops, probe_steps, jobs, threads,
                                                 experiment.sampling_speed)
    memory = memory_per_cell(cells)
    estimates = []
    for cell in cells:
        probe = probes.get(config_key(cell)) or (
            Probe(flops_per_image=flops[config_key(cell)]) if cell.kind != "codec" else None)
        dims = image_dims
        if cell.kind == "speed":
            dims = math.prod(registry.get(cell.family).image_shape(cell.model_config))
        estimate = estimate_cell(cell, probe, experiment, n_train, n_test, dims, flops_per_s)
        estimates.append(dataclasses.replace(estimate, peak_memory_bytes=memory.get(cell.name)))
    if runner.estimate == "flops":
        basis = f"FLOPs at a stated {runner.flops_per_s:.3g} FLOP/s"
    else:
        what = (f"{probe_steps} timed training steps and an inference pass per model"
                if probe_steps else "an inference pass per model (nothing trains)")
        basis = (f"a {time.perf_counter() - start:.0f} s probe: {what} in {jobs} process(es) × "
                 f"{threads} thread(s), CPU time, i.e. assuming the cores are not shared with "
                 "other work")
    speed_phase_s = sum(e.speed_s for e in estimates)
    total = makespan([e.seconds for e in estimates], jobs) + speed_phase_s
    return Plan(experiment.name, estimates, jobs, threads, total, basis, speed_phase_s)
