"""One training loop for every model family that returns a per-image loss.

Implements the VDVAE training recipe (Child 2021, Section 4 and Appendix A; ../shared/spec/
vdvae.md "Training recipe"): AdamW, linear LR warm-up, gradient-norm clipping, **update skipping**
when the pre-clip gradient norm reaches `skip_threshold` or the loss is not finite, and an EMA of
the weights updated on applied updates only (bias-corrected by default: harness.schedule).

Everything a run needs to continue lives in `run_dir/checkpoints/step-<N>.pt` (harness.checkpoint):
model, EMA, optimiser, schedule position, the data position (epoch, batch in epoch) and every RNG
state, so a run killed at any moment and restarted on the same inputs finishes with bitwise the
same weights and losses on CPU. Budgets (steps, epochs, wall-clock seconds) allow comparisons at
equal steps or at equal compute. Multi-GPU: launch with torchrun (harness.distributed); the batch
size is the GLOBAL batch, split evenly over ranks; rank 0 alone writes files.

`run_dir/train_log.jsonl` rows (docs/results.md): {"type": "train", "step", "epoch",
"images_seen", "loss_bits_per_dim", "lr", "grad_norm", "skipped_updates_total", "images_per_s",
"wall_s"} every `log_every_steps` (loss and grad norm are means over the steps since the previous
row, non-finite values left out); {"type": "val", "step", "weights", "bits_per_dim", "split",
"n_images"} every `val_every_steps`; and {"type": "skip", "step", "reason", "grad_norm",
"loss_bits_per_dim"} for every skipped update.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import atomic, checkpoint, distributed, throughput
from harness.checkpoint import capture_rng_state, restore_rng_state, seed_everything
from harness.errors import UserError
from harness.schedule import EMA, LR_SCHEDULES, lr_at_update
from models.likelihoods import nats_to_bits

DEVICES = ("auto", "cpu", "cuda")
PROGRESS_MODES = ("auto", "bar", "lines", "off")
# Fields whose change between a checkpoint and a resumed run alters the trajectory.
_TRAJECTORY_FIELDS = ("batch_size", "lr", "betas", "weight_decay", "warmup_steps", "lr_schedule",
                      "lr_final_fraction", "ema_rate", "ema_bias_correction", "grad_clip",
                      "skip_threshold", "seed", "bf16_autocast", "tf32")


@dataclass(frozen=True)
class TrainConfig:
    """The experiment YAML's `train:` section, field for field. Units are in the names.

    `batch_size` is the GLOBAL batch: with W data-parallel ranks each takes batch_size / W.
    Budgets: training stops at the first of `max_steps`, `max_epochs` (may be fractional) and
    `max_wall_s` that is reached (None = no such limit; at least one must be set). Steps count
    iterations, skipped updates included. `grad_clip` / `skip_threshold` None = off (non-finite
    losses are always skipped). `checkpoint_every_steps` 0 = only at the end; `val_every_steps`
    0 = never. `num_threads` None = torch's default. `progress` "auto" = a tqdm bar on a terminal,
    plain lines otherwise.
    """

    batch_size: int = 32
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.9)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    lr_final_fraction: float = 0.0
    ema_rate: float = 0.999
    ema_bias_correction: bool = True
    grad_clip: float | None = 200.0
    skip_threshold: float | None = 400.0
    max_consecutive_skips: int = 100
    max_steps: int | None = 1000
    max_epochs: float | None = None
    max_wall_s: float | None = None
    seed: int = 0
    device: str = "auto"
    bf16_autocast: bool = False
    tf32: bool = False
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 2
    log_every_steps: int = 50
    val_every_steps: int = 0
    val_batch_size: int = 256
    val_max_images: int | None = None
    num_threads: int | None = None
    progress: str = "auto"
    ddp_find_unused_parameters: bool = False

    def __post_init__(self):
        def bad(name: str, expectation: str):
            raise ValueError(f"train.{name} = {getattr(self, name)!r}: {expectation}")

        def number(name: str, optional: bool = False, integer: bool = False):
            value = getattr(self, name)
            if value is None and optional:
                return
            if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
                try:
                    value = float(value)
                except ValueError:
                    bad(name, "must be a number")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                bad(name, "must be a number" + (" or null" if optional else ""))
            if integer:
                if float(value) != int(value):
                    bad(name, "must be a whole number")
                value = int(value)
            else:
                value = float(value)
            object.__setattr__(self, name, value)

        for name in ("batch_size", "warmup_steps", "max_consecutive_skips", "seed",
                     "checkpoint_every_steps", "keep_checkpoints", "log_every_steps",
                     "val_every_steps", "val_batch_size"):
            number(name, integer=True)
        for name in ("max_steps", "val_max_images", "num_threads"):
            number(name, optional=True, integer=True)
        for name in ("lr", "weight_decay", "lr_final_fraction", "ema_rate"):
            number(name)
        for name in ("grad_clip", "skip_threshold", "max_epochs", "max_wall_s"):
            number(name, optional=True)
        for name in ("ema_bias_correction", "bf16_autocast", "tf32", "ddp_find_unused_parameters"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be true or false")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            bad("betas", "must be two numbers [beta1, beta2]")
        betas = tuple(float(b) for b in self.betas)
        if not all(0.0 <= b < 1.0 for b in betas):
            bad("betas", "each must be in [0, 1)")
        object.__setattr__(self, "betas", betas)
        positive = ("batch_size", "max_consecutive_skips", "keep_checkpoints", "log_every_steps",
                    "val_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        for name in ("warmup_steps", "seed", "checkpoint_every_steps", "val_every_steps"):
            if getattr(self, name) < 0:
                bad(name, "must be 0 or more")
        for name in ("max_steps", "val_max_images", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad(name, "must be at least 1 (or null for no limit)")
        for name in ("max_epochs", "max_wall_s", "grad_clip", "skip_threshold"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                bad(name, "must be positive (or null for none)")
        if not self.lr > 0 or not math.isfinite(self.lr):
            bad("lr", "must be a positive finite number")
        if self.weight_decay < 0:
            bad("weight_decay", "must be 0 or more")
        if not 0.0 <= self.ema_rate < 1.0:
            bad("ema_rate", "must be in [0, 1) (0 = EMA equals the raw weights)")
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            bad("lr_final_fraction", "must be in [0, 1]")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule != "constant" and self.max_steps is None:
            bad("lr_schedule", "a decaying schedule needs train.max_steps (it decays to it)")
        if self.device not in DEVICES:
            bad("device", f"must be one of {', '.join(DEVICES)}")
        if self.progress not in PROGRESS_MODES:
            bad("progress", f"must be one of {', '.join(PROGRESS_MODES)}")
        if self.max_steps is None and self.max_epochs is None and self.max_wall_s is None:
            bad("max_steps", "set at least one budget: max_steps, max_epochs or max_wall_s")
        if (self.grad_clip is not None and self.skip_threshold is not None
                and self.skip_threshold <= self.grad_clip):
            warnings.warn(f"train.skip_threshold ({self.skip_threshold}) <= train.grad_clip "
                          f"({self.grad_clip}): clipping never acts on an applied update",
                          stacklevel=3)


@dataclass
class TrainResult:
    """What a finished (or budget-stopped) run hands to evaluation and the runner.

    `model` holds the final raw weights and `ema_model` the bias-corrected EMA weights (both in
    eval mode, on the training device). `wall_s` adds the earlier segments of a resumed run;
    `train_images_per_s` is images over time spent in training steps (no validation or
    checkpoint writing), global over all ranks.
    """

    model: nn.Module
    ema_model: nn.Module
    steps: int
    epochs: float
    images_seen: int
    wall_s: float
    train_images_per_s: float
    skipped_updates: int
    applied_updates: int
    peak_memory_bytes: int
    stopped_because: str
    final_loss_bits_per_dim: float
    resumed_from_step: int | None
    checkpoint_path: Path | None

    def metric_rows(self) -> list[dict[str, Any]]:
        """Tidy metric rows (docs/results.md) for the training figures."""
        return [{"metric": "train_images_per_s", "value": self.train_images_per_s},
                {"metric": "peak_memory_bytes", "value": self.peak_memory_bytes},
                {"metric": "skipped_updates", "value": self.skipped_updates},
                {"metric": "steps", "value": self.steps},
                {"metric": "train_wall_s", "value": self.wall_s}]


@dataclass
class _LoopState:
    """Counters saved in every checkpoint (plain Python values only)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    images_seen: int = 0
    applied_updates: int = 0
    skipped_updates: int = 0
    consecutive_skips: int = 0
    wall_s: float = 0.0
    step_time_s: float = 0.0
    last_loss_bits_per_dim: float = float("nan")
    last_grad_norm: float = float("nan")
    last_skip_reason: str = ""
    # Means logged every log_every_steps accumulate here.
    interval_loss_sum: float = 0.0
    interval_loss_count: int = 0
    interval_grad_norm_sum: float = 0.0
    interval_grad_norm_count: int = 0
    interval_images: int = 0
    interval_time_s: float = 0.0


class _LossForward(nn.Module):
    """Routes forward() to model.loss() so DistributedDataParallel can wrap any family."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.loss(images)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA GPU is visible; set train.device "
                        "to 'auto' or 'cpu'")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a permutation seeded by (seed, epoch) alone, so any position
    (epoch, index in epoch) can be recomputed on resume."""
    generator = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return torch.from_numpy(generator.permutation(n).astype(np.int64))


def as_uint8_images(images: Any, what: str) -> torch.Tensor:
    """Accept a uint8 (N, C, H, W) tensor or numpy array (e.g. a memmap) without copying it."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise UserError(f"{what} must be uint8 images (N, C, H, W); got "
                        f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")
    return images


class _Reporter:
    """Rank 0's log rows and progress display (tqdm bar on a TTY, plain lines otherwise)."""

    def __init__(self, config: TrainConfig, log_path: Path, enabled: bool, total_steps: int | None):
        self.enabled = enabled
        self.log_path = log_path
        mode = config.progress if enabled else "off"
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)

    def start(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def row(self, row: dict[str, Any]) -> None:
        if self.enabled:
            atomic.append_jsonl(self.log_path, row)

    def message(self, text: str) -> None:
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def progress(self, row: dict[str, Any], eta_s: float | None) -> None:
        if self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)
            self.bar.set_postfix_str(f"loss {row['loss_bits_per_dim']:.4f} bits/dim, "
                                     f"{row['images_per_s']:.1f} images/s", refresh=False)
        elif self.mode == "lines":
            eta = "?" if eta_s is None else time.strftime("%H:%M:%S", time.gmtime(eta_s))
            self.message(f"step {row['step']} | epoch {row['epoch']:.3f} | loss "
                         f"{row['loss_bits_per_dim']:.4f} bits/dim | lr {row['lr']:.3g} | "
                         f"{row['images_per_s']:.1f} images/s | skipped "
                         f"{row['skipped_updates_total']} | eta {eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _budget_reached(config: TrainConfig, state: _LoopState, steps_per_epoch: int) -> str | None:
    if config.max_steps is not None and state.step >= config.max_steps:
        return "max_steps"
    epochs = state.epoch + state.batch_in_epoch / steps_per_epoch
    if config.max_epochs is not None and epochs >= config.max_epochs - 1e-12:
        return "max_epochs"
    if config.max_wall_s is not None and state.wall_s >= config.max_wall_s:
        return "max_wall_s"
    return None


def _eta_s(config: TrainConfig, state: _LoopState, steps_per_epoch: int) -> float | None:
    if state.step == 0 or state.step_time_s <= 0:
        return None
    seconds_per_step = state.wall_s / state.step
    candidates = []
    if config.max_steps is not None:
        candidates.append((config.max_steps - state.step) * seconds_per_step)
    if config.max_epochs is not None:
        remaining = config.max_epochs * steps_per_epoch - (state.epoch * steps_per_epoch
                                                           + state.batch_in_epoch)
        candidates.append(max(0.0, remaining) * seconds_per_step)
    if config.max_wall_s is not None:
        candidates.append(max(0.0, config.max_wall_s - state.wall_s))
    return min(candidates) if candidates else None


def _total_steps(config: TrainConfig, steps_per_epoch: int) -> int | None:
    limits = []
    if config.max_steps is not None:
        limits.append(config.max_steps)
    if config.max_epochs is not None:
        limits.append(math.ceil(config.max_epochs * steps_per_epoch))
    return min(limits) if limits else None


@torch.no_grad()
def _validate(modules: dict[str, nn.Module], images: torch.Tensor, config: TrainConfig,
              device: torch.device, info: distributed.DistInfo) -> tuple[dict[str, float], int]:
    """Mean bits/dim of each module on the validation images, sharded over ranks.

    Runs under a forked RNG with a fixed seed: the noise of stochastic losses (the VAE's posterior
    sample) is the same at every validation, and training's RNG stream is left untouched.
    """
    n = images.shape[0] if config.val_max_images is None else min(config.val_max_images,
                                                                    images.shape[0])
    per_rank = math.ceil(n / info.world_size)
    start, stop = info.rank * per_rank, min(n, (info.rank + 1) * per_rank)
    devices = [device.index or 0] if device.type == "cuda" else []
    results = {}
    for name, module in modules.items():
        was_training = module.training
        module.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(config.seed + 1_000_003 * (info.rank + 1))
            for first in range(start, stop, config.val_batch_size):
                batch = images[first:min(stop, first + config.val_batch_size)].to(device)
                loss = module.loss(batch)["loss_nats_per_dim"].double()
                totals[0] += loss.sum()
                totals[1] += loss.numel()
        module.train(was_training)
        distributed.all_reduce_sum(totals, info)
        results[name] = float(nats_to_bits(totals[0] / totals[1]))
    return results, n


def _checkpoint_state(model, ema, optimizer, state, config, info, device) -> dict[str, Any]:
    rng = distributed.all_gather_object(capture_rng_state(device), info)
    return {"format": 1, "step": state.step, "loop": dataclasses.asdict(state),
            "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"kind": config.lr_schedule, "next_update": state.step + 1},
            "rng_per_rank": rng, "world_size": info.world_size,
            "config": dataclasses.asdict(config)}


def _save(ckpt_dir, model, ema, optimizer, state, config, info, device) -> Path:
    payload = _checkpoint_state(model, ema, optimizer, state, config, info, device)
    path = checkpoint.checkpoint_path(ckpt_dir, state.step)
    if info.is_main:
        path = checkpoint.save_checkpoint(ckpt_dir, state.step, payload, config.keep_checkpoints)
    distributed.barrier(info)
    return path


def _resume(ckpt_dir: Path, log_path: Path, model, ema, optimizer, config: TrainConfig,
            info: distributed.DistInfo, device: torch.device) -> tuple[_LoopState, int | None]:
    """Load the newest good checkpoint (rank 0 picks it), or seed a fresh run."""
    chosen = None
    if info.is_main:
        checkpoint.remove_stale_temporaries(ckpt_dir)
        loaded = checkpoint.load_latest_checkpoint(ckpt_dir)
        chosen = None if loaded is None else str(loaded.path)
    chosen = distributed.broadcast_object(chosen, info)
    if chosen is None:
        seed_everything(config.seed, info.rank)
        if info.is_main and log_path.exists():
            atomic.write_text(log_path, "")  # a log without a checkpoint belongs to no run
        distributed.barrier(info)
        return _LoopState(), None
    saved = checkpoint.read_checkpoint(Path(chosen))
    changed = [name for name in _TRAJECTORY_FIELDS
               if name in saved["config"] and _plain(saved["config"][name])
               != _plain(getattr(config, name))]
    if changed and info.is_main:
        warnings.warn(f"resuming {chosen} with changed train settings: {', '.join(changed)}; "
                      f"the run is no longer identical to an uninterrupted one", stacklevel=3)
    model.load_state_dict(saved["model"])
    ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    state = _LoopState(**saved["loop"])
    if saved["world_size"] == info.world_size:
        restore_rng_state(saved["rng_per_rank"][info.rank], device)
    else:
        if info.is_main:
            warnings.warn(f"{chosen} was written by {saved['world_size']} processes, now "
                          f"{info.world_size}: RNG streams restart from the seed", stacklevel=3)
        seed_everything(config.seed + state.step, info.rank)
    if info.is_main and log_path.exists():
        rows = [row for row in atomic.read_jsonl(log_path) if row.get("step", 0) <= state.step]
        atomic.write_text(log_path, "".join(_json_line(row) for row in rows))
    distributed.barrier(info)
    return state, state.step


def _plain(value):
    return tuple(value) if isinstance(value, list) else value


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row, sort_keys=True, default=str) + "\n"


def _skip_error(config: TrainConfig, state: _LoopState, path: Path) -> UserError:
    if state.last_skip_reason == "nonfinite":
        cause = ("the loss or gradient norm was not finite (NaN/inf)", "lower train.lr, set "
                 "train.grad_clip, or check the data and the model for NaN/inf")
    else:
        cause = (f"the pre-clip gradient norm ({state.last_grad_norm:.4g}) was >= "
                 f"train.skip_threshold ({config.skip_threshold})",
                 "raise train.skip_threshold (or set it to null), or lower train.lr")
    return UserError(f"training stopped at step {state.step}: the last {state.consecutive_skips} "
                     f"updates were all skipped because {cause[0]}, so nothing was being "
                     f"learned; {cause[1]}. Progress so far is saved in {path}")


def train(model: nn.Module, train_images, config: TrainConfig, run_dir: Path, *,
          val_images=None) -> TrainResult:
    """Train `model` on uint8 images (N, C, H, W) until a budget in `config` is reached.

    Resumes from the newest good checkpoint in `run_dir/checkpoints` when there is one. Only the
    sampled batch of `train_images` is read and converted per step (memory-mapped input stays on
    disk). Raises UserError when updates are skipped `max_consecutive_skips` times in a row.
    """
    train_images = as_uint8_images(train_images, "train_images")
    if val_images is not None:
        val_images = as_uint8_images(val_images, "val_images")
    run_dir = Path(run_dir)
    info = distributed.env_info()
    device = resolve_device(config.device, info.local_rank)
    info = distributed.setup(device.type)
    if config.batch_size % info.world_size:
        raise UserError(f"train.batch_size ({config.batch_size}) must be a multiple of the "
                        f"number of processes ({info.world_size}): it is the global batch")
    steps_per_epoch = train_images.shape[0] // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"train.batch_size ({config.batch_size}) exceeds the "
                        f"{train_images.shape[0]} training images; lower it")
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32
        throughput.reset_peak_memory(device)

    model.to(device).train()
    forward: nn.Module = _LossForward(model)
    if info.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.ddp_find_unused_parameters)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    ema = EMA(model, config.ema_rate, config.ema_bias_correction)

    ckpt_dir, log_path = run_dir / "checkpoints", run_dir / "train_log.jsonl"
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    state, resumed_from = _resume(ckpt_dir, log_path, model, ema, optimizer, config, info, device)
    last_saved = resumed_from
    reporter = _Reporter(config, log_path, info.is_main, _total_steps(config, steps_per_epoch))
    reporter.start(state.step)
    rows = distributed.local_slice(config.batch_size, info)
    permutation, permutation_epoch = None, -1
    segment_start, wall_before = time.perf_counter(), state.wall_s
    stopped_because = None
    try:
        while True:
            stopped_because = _budget_reached(config, state, steps_per_epoch)
            if stopped_because:
                break
            if state.batch_in_epoch >= steps_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            if permutation_epoch != state.epoch:
                permutation = epoch_permutation(config.seed, state.epoch, train_images.shape[0])
                permutation_epoch = state.epoch
            step_start = time.perf_counter()
            first = state.batch_in_epoch * config.batch_size
            indices = permutation[first:first + config.batch_size][rows]
            batch = train_images[indices].to(device, non_blocking=True)  # (n, C, H, W) uint8

            lr = lr_at_update(state.step + 1, base_lr=config.lr, warmup_steps=config.warmup_steps,
                              schedule=config.lr_schedule, total_steps=config.max_steps,
                              final_fraction=config.lr_final_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
                per_image = forward(batch)["loss_nats_per_dim"]  # (n,)
            per_image = per_image.float()
            per_image.mean().backward()
            grad_norm_t = torch.nn.utils.clip_grad_norm_(
                params, config.grad_clip if config.grad_clip is not None else float("inf"))
            elapsed = time.perf_counter() - segment_start
            # One collective per step: global loss sum, image count, and the mean elapsed time
            # (so every rank takes the same wall-clock stopping decision).
            stats = torch.stack([per_image.detach().double().sum(),
                                 torch.tensor(float(per_image.numel()), dtype=torch.float64,
                                              device=device),
                                 torch.tensor(elapsed, dtype=torch.float64, device=device)])
            stats = distributed.all_reduce_sum(stats, info).tolist()
            loss_bits = float(nats_to_bits(stats[0] / stats[1]))
            grad_norm = float(grad_norm_t)
            state.wall_s = wall_before + stats[2] / info.world_size

            if not (math.isfinite(loss_bits) and math.isfinite(grad_norm)):
                skip_reason = "nonfinite"
            elif config.skip_threshold is not None and grad_norm >= config.skip_threshold:
                skip_reason = "grad_norm"
            else:
                skip_reason = ""
            if skip_reason:
                state.skipped_updates += 1
                state.consecutive_skips += 1
                state.last_skip_reason = skip_reason
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
                ema.update()
                state.applied_updates += 1
                state.consecutive_skips = 0

            state.step += 1
            state.batch_in_epoch += 1
            state.images_seen += config.batch_size
            state.last_loss_bits_per_dim, state.last_grad_norm = loss_bits, grad_norm
            step_s = time.perf_counter() - step_start
            state.step_time_s += step_s
            state.interval_time_s += step_s
            state.interval_images += config.batch_size
            if math.isfinite(loss_bits):
                state.interval_loss_sum += loss_bits
                state.interval_loss_count += 1
            if math.isfinite(grad_norm):
                state.interval_grad_norm_sum += grad_norm
                state.interval_grad_norm_count += 1
            if skip_reason:
                reporter.row({"type": "skip", "step": state.step, "reason": skip_reason,
                              "grad_norm": grad_norm, "loss_bits_per_dim": loss_bits})
                reporter.message(f"step {state.step}: update skipped ({skip_reason}; grad norm "
                                 f"{grad_norm:.4g}, loss {loss_bits:.4g} bits/dim); "
                                 f"{state.skipped_updates} skipped in total")

            if state.step % config.log_every_steps == 0:
                row = {"type": "train", "step": state.step,
                       "epoch": state.epoch + state.batch_in_epoch / steps_per_epoch,
                       "images_seen": state.images_seen,
                       "loss_bits_per_dim": (state.interval_loss_sum / state.interval_loss_count
                                             if state.interval_loss_count else float("nan")),
                       "lr": lr,
                       "grad_norm": (state.interval_grad_norm_sum / state.interval_grad_norm_count
                                     if state.interval_grad_norm_count else float("nan")),
                       "skipped_updates_total": state.skipped_updates,
                       "images_per_s": state.interval_images / max(state.interval_time_s, 1e-9),
                       "wall_s": state.wall_s}
                reporter.row(row)
                reporter.progress(row, _eta_s(config, state, steps_per_epoch))
                state.interval_loss_sum = state.interval_grad_norm_sum = 0.0
                state.interval_loss_count = state.interval_grad_norm_count = 0
                state.interval_images, state.interval_time_s = 0, 0.0

            if val_images is not None and config.val_every_steps and \
                    state.step % config.val_every_steps == 0:
                values, n_val = _validate({"raw": model, "ema": ema.module()}, val_images,
                                          config, device, info)
                for weights, bits in values.items():
                    reporter.row({"type": "val", "step": state.step, "weights": weights,
                                  "bits_per_dim": bits, "split": "validation",
                                  "n_images": n_val})

            if state.consecutive_skips >= config.max_consecutive_skips:
                path = _save(ckpt_dir, model, ema, optimizer, state, config, info, device)
                raise _skip_error(config, state, path)
            if config.checkpoint_every_steps and state.step % config.checkpoint_every_steps == 0:
                _save(ckpt_dir, model, ema, optimizer, state, config, info, device)
                last_saved = state.step
        if last_saved != state.step:
            _save(ckpt_dir, model, ema, optimizer, state, config, info, device)
    finally:
        reporter.close()

    model.eval()
    return TrainResult(
        model=model, ema_model=ema.module(), steps=state.step,
        epochs=state.epoch + state.batch_in_epoch / steps_per_epoch,
        images_seen=state.images_seen, wall_s=state.wall_s,
        train_images_per_s=state.images_seen / state.step_time_s if state.step_time_s else 0.0,
        skipped_updates=state.skipped_updates, applied_updates=state.applied_updates,
        peak_memory_bytes=throughput.peak_memory_bytes(device), stopped_because=stopped_because,
        final_loss_bits_per_dim=state.last_loss_bits_per_dim, resumed_from_step=resumed_from,
        checkpoint_path=checkpoint.checkpoint_path(ckpt_dir, state.step))
