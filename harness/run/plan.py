"""The plan `harness run` prints before running: cells, parameters, FLOPs, estimated time.

Times come from a quick measured probe (default; harness.run.probe). Alternatively
(`runner.estimate: flops`) times follow from FLOPs at a stated sustained rate
(`runner.flops_per_s`): training ≈ 3 × forward FLOPs per image. FLOPs and training memory are
counted on the meta device, once per config per process. The total is the makespan of the cells
over `jobs` workers, longest first (the order the runner uses), plus the speed phase: every
sampling-speed measurement, one after another once the cells have finished
(harness.run.speed_phase), estimated at the fewest rounds its rule allows. The counts and the
probe print their progress on stderr (harness.run.progress).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.engine import budget, throughput
from harness.engine.config import TrainConfig
from harness.engine.evaluate import SAMPLE_CHUNK, chosen_studies, sample_set_size
from harness.engine.sampling import samplers
from harness.engine.studies import StudyCost
from harness.errors import MODEL_BUILD_ERRORS, UserError, first_line
from harness.experiment.schema import Cell, ExperimentConfig
from harness.run.probe import Probe, config_key, probe_models
from harness.run.progress import PhaseProgress, fmt_duration
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


# Counted once per process: both are functions of the config alone, and counting on the meta
# device takes seconds per paper-size config (a re-plan, or many dry runs in one process).
_FLOPS_SEEN: dict[tuple, float] = {}
_MEMORY_SEEN: dict[tuple, int] = {}


@contextlib.contextmanager
def _cannot_build(cell: Cell, what: str) -> Iterator[None]:
    """A config too large for the tensors it asks for (sizes past 64 bits, an allocation no
    machine has) is the user's to change: one line naming the cell."""
    try:
        yield
    except MODEL_BUILD_ERRORS as error:
        raise UserError(f"cell {cell.name}: cannot build its model to {what} "
                        f"({first_line(error)}); make the model or the batch smaller") from None


def _seen_key(cell: Cell) -> tuple:
    """The config and the class that builds it (a test may register a family name twice)."""
    return registry.get(cell.family).model_cls, config_key(cell)


def _memory_key(cell: Cell) -> tuple | None:
    """What a training step's memory depends on; None for a cell that trains no step."""
    if cell.kind != "train" or cell.train.max_steps == 0:  # zero steps: evaluation only
        return None
    return _seen_key(cell), cell.train.batch_size, cell.train.activation_checkpointing


def uncounted(cells: list[Cell]) -> int:
    """How many FLOP and memory counts the plan of `cells` has still to make."""
    flops = {_seen_key(c) for c in cells if c.kind != "codec"} - set(_FLOPS_SEEN)
    memory = {_memory_key(c) for c in cells} - {None} - set(_MEMORY_SEEN)
    return len(flops) + len(memory)


def flops_per_config(cells: list[Cell], progress: PhaseProgress | None = None
                     ) -> dict[str, float]:
    """Forward FLOPs per image of each distinct model config (one batch-1 pass each)."""
    found: dict[str, float] = {}
    for cell in cells:
        key = config_key(cell)
        if cell.kind == "codec" or key in found:
            continue
        if _seen_key(cell) in _FLOPS_SEEN:
            found[key] = _FLOPS_SEEN[_seen_key(cell)]
            continue
        family = registry.get(cell.family)
        shape = (1,) + tuple(family.image_shape(cell.model_config))
        try:  # shapes are all the counter needs: no weights allocated, no arithmetic done
            with torch.device("meta"):
                model = family.build_model(cell.model_config)
                images = torch.zeros(shape, dtype=torch.uint8)
            found[key] = throughput.flops_per_image(model, images)
        except Exception:  # noqa: BLE001 - an op without a meta kernel: count on real tensors
            with _cannot_build(cell, "count its FLOPs"):
                torch.manual_seed(0)
                model = family.build_model(cell.model_config)
                found[key] = throughput.flops_per_image(model, torch.zeros(shape,
                                                                            dtype=torch.uint8))
        _FLOPS_SEEN[_seen_key(cell)] = found[key]
        if progress is not None:
            progress.advance(f"FLOPs of {cell.name}")
    return found


def memory_per_cell(cells: list[Cell], progress: PhaseProgress | None = None
                    ) -> dict[str, int]:
    """Expected peak memory of each train cell's training step (weights, gradients, AdamW, EMA
    and the activations kept for backward at its batch size and activation checkpointing),
    measured on the meta device: no weights allocated, no arithmetic done."""
    memory = {}
    for cell in cells:
        key = _memory_key(cell)
        if key is None:
            continue
        if key not in _MEMORY_SEEN:
            family = registry.get(cell.family)
            with _cannot_build(cell, f"count its training memory at train.batch_size "
                                     f"{cell.train.batch_size:,}"):
                with torch.device("meta"):
                    model = family.build_model(cell.model_config)
                    images = torch.zeros((cell.train.batch_size,)
                                         + tuple(family.image_shape(cell.model_config)),
                                         dtype=torch.uint8)
                if cell.train.activation_checkpointing:
                    model.use_activation_checkpointing(True)
                _MEMORY_SEEN[key] = throughput.training_memory_bytes(model, images)
            if progress is not None:
                progress.advance(f"training memory of {cell.name}")
        memory[cell.name] = _MEMORY_SEEN[key]
    return memory


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
    workers = [0.0] * max(1, min(jobs, len(durations)))  # more workers than cells stay idle
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
    counting = PhaseProgress("plan", uncounted(cells), verb="counted")
    counting.start(f"counting the FLOPs and training memory of {counting.count} model "
                   "config(s) on the meta device (shapes only: no weights, no arithmetic)")
    flops = flops_per_config(cells, counting)
    memory = memory_per_cell(cells, counting)
    counting.close()
    # The FLOP-rate estimate needs no timing at all (and a paper-size model is slow on a CPU).
    probes = {} if flops_per_s else probe_models(cells, flops, probe_steps, jobs, threads,
                                                 experiment.sampling_speed)
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
