"""What the engine is told to do: `TrainConfig` (training) and `EvalConfig` (evaluation).

Plain frozen dataclasses, importing no torch and no YAML: the experiment schema
(harness.experiment) composes them from a file, tests and scripts build them directly. Each field
declares its type, range and allowed values in its annotation (harness.checks); `__post_init__`
checks those and then only what involves several fields.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

from harness.checks import (
    NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitClosed, UnitOpen,
    validate_fields,
)

LRSchedule = Literal["constant", "cosine", "linear"]
Device = Literal["auto", "cpu", "cuda"]
Progress = Literal["auto", "bar", "lines", "off"]
Weights = Literal["raw", "ema"]
Sampler = Literal["naive", "cached"]

# Fields whose change between a checkpoint and a resumed run alters the trajectory.
TRAJECTORY_FIELDS = ("batch_size", "lr", "betas", "weight_decay", "warmup_steps", "lr_schedule",
                     "lr_final_fraction", "ema_rate", "ema_bias_correction", "grad_clip",
                     "skip_threshold", "seed", "bf16_autocast", "tf32")


@dataclass(frozen=True)
class TrainConfig:
    """The experiment YAML's `train:` section, field for field. Units are in the names.

    `batch_size` is the GLOBAL batch: with W data-parallel ranks each takes batch_size / W.
    `max_steps` 0 trains nothing: the cell evaluates the weights it starts from (a model entry's
    `checkpoint`). Budgets: training stops at the first of `max_steps`, `max_epochs` (may be
    fractional) and `max_wall_s` that is reached (None = no such limit; at least one must be set).
    Steps count iterations, skipped updates included. `grad_clip` / `skip_threshold` None = off
    (non-finite losses are always skipped). `checkpoint_every_steps` 0 = only at the end;
    `val_every_steps` 0 = never. `num_threads` None = torch's default. `progress` "auto" = a tqdm
    bar on a terminal, plain lines otherwise. `activation_checkpointing` recomputes each top-down
    block in backward (families declaring ACTIVATION_CHECKPOINTING): less memory, the same
    trajectory.
    """

    batch_size: PositiveInt = 32
    lr: PositiveFloat = 2e-4
    betas: tuple[UnitOpen, UnitOpen] = (0.9, 0.9)
    weight_decay: NonNegativeFloat = 0.01
    warmup_steps: NonNegativeInt = 100
    lr_schedule: LRSchedule = "constant"
    lr_final_fraction: UnitClosed = 0.0
    ema_rate: UnitOpen = 0.999  # 0 = the EMA equals the raw weights
    ema_bias_correction: bool = True
    grad_clip: PositiveFloat | None = 200.0
    skip_threshold: PositiveFloat | None = 400.0
    max_consecutive_skips: PositiveInt = 100
    max_steps: NonNegativeInt | None = 1000  # 0: no training (evaluate the start weights)
    max_epochs: PositiveFloat | None = None
    max_wall_s: PositiveFloat | None = None
    seed: NonNegativeInt = 0
    device: Device = "auto"
    bf16_autocast: bool = False
    tf32: bool = False
    checkpoint_every_steps: NonNegativeInt = 500
    keep_checkpoints: PositiveInt = 2
    log_every_steps: PositiveInt = 50
    val_every_steps: NonNegativeInt = 0
    val_batch_size: PositiveInt = 256
    val_max_images: PositiveInt | None = None
    num_threads: PositiveInt | None = None
    progress: Progress = "auto"
    ddp_find_unused_parameters: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self):
        validate_fields(self, "train")
        if self.lr_schedule != "constant" and self.max_steps is None:
            raise ValueError("train.lr_schedule: a decaying schedule needs train.max_steps "
                             "(it decays to it)")
        if self.max_steps is None and self.max_epochs is None and self.max_wall_s is None:
            raise ValueError("train.max_steps: set at least one budget: max_steps, max_epochs or "
                             "max_wall_s")
        if (self.grad_clip is not None and self.skip_threshold is not None
                and self.skip_threshold <= self.grad_clip):
            warnings.warn(f"train.skip_threshold ({self.skip_threshold}) <= train.grad_clip "
                          f"({self.grad_clip}): clipping never acts on an applied update",
                          stacklevel=3)


@dataclass(frozen=True)
class EvalConfig:
    """The experiment YAML's `eval:` section. `iw_k` 0 skips the importance-weighted bound;
    `iw_max_images` None evaluates it on every test image (its cost is k forward passes per
    image); `iw_chunk_size` is the number of the k samples per decoder pass.

    `batch_size` None picks 512 on a GPU and 32 on a CPU: on a CPU large batches are slower per
    image, as big activations spill the caches and are allocated afresh by the kernel
    (docs/benchmarks.md). `active_units_max_images` bounds the test images whose posterior
    means (collected in the ELBO pass itself, no extra pass) count for active units (None =
    every test image). Paired comparisons need the same batch size (and noise seed) for every
    model: posterior noise is seeded per batch."""

    batch_size: PositiveInt | None = None
    weights: tuple[Weights, ...] = ("raw", "ema")
    iw_k: NonNegativeInt = 0
    iw_max_images: PositiveInt | None = 1000
    iw_chunk_size: PositiveInt = 16
    noise_seed: NonNegativeInt = 0
    sample_batch_size: PositiveInt = 16
    sample_repeats: PositiveInt = 3      # sample calls per timed round (the speed phase)
    sample_warmup: NonNegativeInt = 1
    # The speed phase's stopping rule (harness.engine.throughput.measure_until_settled): rounds
    # until the last `sample_window_rounds` agree within this relative spread, or a cap is hit.
    sample_spread_tolerance: NonNegativeFloat = 0.05
    sample_window_rounds: PositiveInt = 3
    sample_max_rounds: PositiveInt = 10
    sample_max_s: PositiveFloat = 120.0
    sample_methods: tuple[Sampler, ...] = ("naive", "cached")
    n_grid_samples: NonNegativeInt = 64
    flops: bool = True
    active_unit_threshold: NonNegativeFloat = 0.01
    active_units_max_images: PositiveInt | None = None
    # The hierarchy figures (families with latents in and out): samples per figure row count
    # (0 turns the study off) and test images kept fixed at the top.
    hierarchy_samples: NonNegativeInt = 8
    hierarchy_images: PositiveInt = 4
    # Sample quality: samples scored against the first min(quality_samples, N_test / 2) test
    # images (the next as many give the real-vs-real floor); 0 turns the study off. Features:
    # "random_cnn" (offline, seeded) or "inception" (the standard FID network, from the
    # weights file `quality_inception_weights`).
    quality_samples: NonNegativeInt = 1000
    quality_features: Literal["random_cnn", "inception"] = "random_cnn"
    quality_inception_weights: str | None = None
    # The lossless-codec studies (harness.engine.studies.lossless_codec): real files of the
    # first `codec_images` test images (0: off), coded `codec_batch_size` at a time (None: the
    # codec's default; the bits-back codec's one-off initial bits grow with it).
    codec_images: NonNegativeInt = 0
    codec_batch_size: PositiveInt | None = None

    def __post_init__(self):
        validate_fields(self, "eval")
        if not self.weights:
            raise ValueError("eval.weights: name at least one of raw, ema")
        if self.sample_max_rounds < self.sample_window_rounds:
            raise ValueError(f"eval.sample_max_rounds ({self.sample_max_rounds}) must be >= "
                             f"eval.sample_window_rounds ({self.sample_window_rounds})")

    def batch_size_on(self, device_type: str) -> int:
        """The evaluation batch on a device type ('cuda' or 'cpu') when `batch_size` is None."""
        if self.batch_size is not None:
            return self.batch_size
        return 512 if device_type == "cuda" else 32
