"""The experiment schema: frozen dataclasses for every section of an experiment file, and `Cell`,
one unit of work after sweep expansion. No torch, no YAML: harness.experiment.load builds these
from a file, the runner (harness.run) consumes them.

Every field declares its type, range and allowed values in its annotation (harness.checks);
`__post_init__` checks those and then only what involves several fields. The engine's own
sections (`train:`, `eval:`) are harness.engine.config's `TrainConfig` and `EvalConfig`.

File layout (every section optional except `models`; experiments/smoke.yaml has a full example):

    name: depth_sweep                 # default: the file's stem
    description: one line for the report
    data: {dataset: fashion_mnist, options: {...}, data_dir: null,
           train_images: null, validation_images: null, test_images: null}   # null = all
    models:                           # one entry per model; the key names its cells
      vdvae:
        family: vdvae                 # a models.registry family
        preset: fmnist_400k           # optional; `config:` fields override it
        config: {zdim: 16}
        match: {params: 400000}       # or {params_of: other_model}: solve the family's size field
        checkpoint: ckpt/x-model-ema.th  # start from these weights (relative: to this file;
                                      # $HARNESS_DATA expands); train.max_steps 0: evaluate only
        seed: 0
        kind: train                   # train | speed (sampling speed of untrained weights)
        train: {lr: 3e-4}             # per-model TrainConfig overrides
        eval: {}                      # per-model EvalConfig overrides
        sweep:                        # cells = grid product, then the listed points
          grid: {effective_depth: [1, 2, 4], seed: [0]}
          points: [{effective_depth: 1, seed: 1}]
    train: {...}                      # TrainConfig fields (experiment-wide)
    eval: {...}                       # EvalConfig fields (experiment-wide)
    codecs: [png, webp]               # reference rows on the same test images
    sampling_speed: {batch_sizes: [1, 16], repeats: 3, warmup: 1}
    runner: {jobs: 2, threads_per_job: null, summary_weights: raw, report: true,
             launcher: local, gpus: null, gpus_per_cell: 1,   # local | slurm; GPU ids
             slurm: {partition: gpu, gpus_per_cell: 1, tasks_per_cell: null,
                     cpus_per_cell: 8, mem_gb: 64,
                     time_min: 240, account: null, qos: null, array_parallelism: null,
                     additional: {constraint: a100}}}
    smoke: false                      # `--set smoke=true` shrinks the run to seconds
    smoke_overrides: {train.max_steps: 4}  # dotted keys applied when smoke is on
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.checks import (
    NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitExclusive, validate_fields,
)
from harness.contract import DEFAULT_SUMMARY_WEIGHTS
from harness.engine.config import EvalConfig, Sampler, TrainConfig, Weights
from harness.plain import to_plain

Codec = Literal["png", "webp"]
CODECS: tuple[str, ...] = ("png", "webp")
CellKind = Literal["train", "speed", "codec"]
TOP_LEVEL = ("name", "description", "data", "models", "train", "eval", "codecs",
             "sampling_speed", "runner", "smoke", "smoke_overrides")


@dataclass(frozen=True)
class DataSpec:
    """Which dataset and how much of each split (None: the whole split)."""

    dataset: str
    options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    train_images: PositiveInt | None = None
    validation_images: PositiveInt | None = None
    test_images: PositiveInt | None = None

    def __post_init__(self):
        validate_fields(self)


@dataclass(frozen=True)
class MatchSpec:
    """Parameter matching: solve the family's size field (VDVAE `width`, PixelCNN `channels`)
    for a budget given directly (`params`) or as another model's count (`params_of`)."""

    params: PositiveInt | None = None
    params_of: str | None = None
    tolerance: UnitExclusive = 0.05  # relative; the plan fails when the solved count is further

    def __post_init__(self):
        validate_fields(self)
        if (self.params is None) == (self.params_of is None):
            raise ValueError("give exactly one of 'params' (a number) or 'params_of' (another "
                             "model's name)")


@dataclass(frozen=True)
class SweepSpec:
    """Cells of one model: the product of `grid` (first key varies slowest), then `points`."""

    grid: dict[str, list] = field(default_factory=dict)
    points: tuple[dict, ...] = ()

    def __post_init__(self):
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"{key}: a grid axis needs at least one value")


@dataclass(frozen=True)
class ModelSpec:
    """One entry of `models:`; `train` / `eval` hold only the fields this model overrides."""

    name: str
    family: str
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    match: MatchSpec | None = None
    checkpoint: str | None = None  # weights file (harness.engine.weights), absolute once loaded
    data: DataSpec | None = None   # this model's dataset, when not the file's `data:`
    seed: NonNegativeInt = 0
    kind: Literal["train", "speed"] = "train"
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    sweep: SweepSpec = field(default_factory=SweepSpec)

    def __post_init__(self):
        validate_fields(self)


@dataclass(frozen=True)
class SpeedSpec:
    """Sampling throughput: median images/s over `repeats` timed calls after `warmup`."""

    batch_sizes: tuple[PositiveInt, ...] = (1, 16)  # VAE ancestral and PixelCNN cached sampling
    repeats: PositiveInt = 3
    warmup: NonNegativeInt = 1
    methods: tuple[Sampler, ...] = ("naive", "cached")  # autoregressive samplers
    # The naive sampler runs the network H·W·C times per call: one call is already a long,
    # stable timing, and big batches of it take hours on a CPU.
    naive_batch_sizes: tuple[PositiveInt, ...] = (1,)
    naive_repeats: PositiveInt = 1
    naive_warmup: NonNegativeInt = 0
    temperature: PositiveFloat = 1.0
    # The speed phase's stopping rule, as eval.sample_spread_tolerance etc. (a round is
    # `repeats` calls, `naive_repeats` for the naive sampler).
    spread_tolerance: NonNegativeFloat = 0.05
    window_rounds: PositiveInt = 3
    max_rounds: PositiveInt = 10
    max_s: PositiveFloat = 120.0

    def __post_init__(self):
        validate_fields(self)
        for name in ("batch_sizes", "naive_batch_sizes"):
            if not getattr(self, name):
                raise ValueError(f"{name}: list at least one batch size")
        if self.max_rounds < self.window_rounds:
            raise ValueError(f"max_rounds ({self.max_rounds}) must be >= window_rounds "
                             f"({self.window_rounds})")

    def timing(self, method: str) -> tuple[tuple[int, ...], int, int]:
        """(batch sizes, repeats, warm-up calls) for a sampler."""
        if method == "naive":
            return self.naive_batch_sizes, self.naive_repeats, self.naive_warmup
        return self.batch_sizes, self.repeats, self.warmup


@dataclass(frozen=True)
class SlurmSpec:
    """`runner.slurm:`: what each cell's Slurm job asks for (harness.run.slurm submits them)."""

    partition: str | None = None                # None: the cluster's default partition
    gpus_per_cell: NonNegativeInt = 0           # > 1: that many tasks of one job, DDP
    tasks_per_cell: PositiveInt | None = None   # DDP ranks of one job; None: gpus_per_cell or 1
    cpus_per_cell: PositiveInt = 1              # per task
    mem_gb: PositiveFloat | None = None         # per job; None: the partition's default
    time_min: PositiveInt = 60                  # past it Slurm signals, the cell requeues
    account: str | None = None
    qos: str | None = None
    array_parallelism: PositiveInt | None = None  # cells running at once; None: all
    additional: dict[str, Any] = field(default_factory=dict)  # more sbatch parameters
    poll_s: PositiveFloat = 2.0                 # how often a waiting run asks squeue

    def __post_init__(self):
        validate_fields(self)
        if (self.tasks_per_cell is not None and self.gpus_per_cell
                and self.tasks_per_cell != self.gpus_per_cell):
            raise ValueError(f"tasks_per_cell: each task drives one GPU, so with gpus_per_cell "
                             f"{self.gpus_per_cell} it must be {self.gpus_per_cell} or unset, "
                             f"got {self.tasks_per_cell}")

    @property
    def tasks(self) -> int:
        """Tasks (data-parallel ranks) of one cell's job: one per GPU, or `tasks_per_cell` on
        CPUs (gloo)."""
        return self.tasks_per_cell or max(1, self.gpus_per_cell)


@dataclass(frozen=True)
class RunnerSpec:
    jobs: PositiveInt = 1                       # cells in parallel processes
    threads_per_job: PositiveInt | None = None  # torch threads per process; None: cores // jobs
    summary_weights: Weights = DEFAULT_SUMMARY_WEIGHTS  # which weights summary.csv headlines
    report: bool = True                         # build the report at the end
    probe_steps: NonNegativeInt = 2             # timed training steps per model for the ETA
    time_budget_min: PositiveFloat | None = None  # the plan warns when its estimate is over
    estimate: Literal["probe", "flops"] = "probe"  # how the plan estimates time
    flops_per_s: PositiveFloat | None = None    # sustained rate assumed by estimate: flops
    launcher: Literal["local", "slurm"] = "local"  # `--launcher` overrides it
    gpus: tuple[NonNegativeInt, ...] | None = None  # local GPUs to use; None: all visible
    gpus_per_cell: PositiveInt = 1              # local GPUs per cell; > 1 runs under torchrun
    slurm: SlurmSpec = field(default_factory=SlurmSpec)

    def __post_init__(self):
        validate_fields(self)
        if self.gpus is not None and len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpus: each GPU once, got {list(self.gpus)}")
        if self.estimate == "flops" and self.flops_per_s is None:
            raise ValueError("flops_per_s: estimate 'flops' needs a positive flops_per_s "
                             "(the sustained FLOP/s of the machine you will run on)")


@dataclass(frozen=True)
class Cell:
    """One unit of work: a model trained (or timed) at one sweep point, or a codec row.

    `model_config` is the family's own frozen config dataclass (models.registry); `family` is the
    rows' `model` column ("codec" for codec cells, whose `model` names the codec).
    """

    name: str
    kind: CellKind
    model: str                 # the model's name in the file, or the codec ("png")
    family: str
    seed: int = 0
    point: dict = field(default_factory=dict)     # swept key -> value (what makes it this cell)
    model_config: Any = None
    train: TrainConfig | None = None
    eval: EvalConfig | None = None
    params: int | None = None
    effective_depth: int | None = None            # G of a hierarchical VAE, else None
    data: DataSpec | None = None                  # what it trains and is scored on (train cells)
    match: dict | None = None  # {"field", "value", "target_params", "params"} when matched
    checkpoint: str | None = None  # absolute path of the weights the cell starts from

    def record(self) -> dict:
        """Plain-data description for plan.json and config.json."""
        return {"name": self.name, "kind": self.kind, "model": self.model,
                "family": self.family, "seed": self.seed, "point": to_plain(self.point),
                "effective_depth": self.effective_depth, "params": self.params,
                "match": self.match, "checkpoint": self.checkpoint,
                "model_config": to_plain(self.model_config), "train": to_plain(self.train),
                "eval": to_plain(self.eval)}

    def contract_fields(self) -> dict:
        """The fields the results contract's summary row needs (harness.contract)."""
        return {"name": self.name, "kind": self.kind, "family": self.family,
                "effective_depth": self.effective_depth, "seed": self.seed,
                "params": self.params}


@dataclass(frozen=True)
class ExperimentConfig:
    """A loaded experiment: its sections, and `cells`, the sweep expanded and validated."""

    name: str
    path: Path
    description: str
    data: DataSpec | None
    models: dict[str, ModelSpec]
    train: TrainConfig               # experiment-wide
    eval: EvalConfig                 # experiment-wide
    codecs: tuple[Codec, ...]
    sampling_speed: SpeedSpec | None
    runner: RunnerSpec
    smoke: bool
    overrides: tuple[str, ...]       # the --set arguments, as given
    record: dict = field(repr=False, compare=False, default_factory=dict)  # the file as loaded
    cells: tuple[Cell, ...] = ()
