"""One training loop for every model family that returns a per-image loss.

Implements the VDVAE training recipe (Child 2021 and its reference implementation,
openai/vdvae): AdamW, linear LR warm-up, gradient-norm clipping,
**update skipping** when the pre-clip gradient norm reaches `skip_threshold` or the loss is not
finite, and an EMA of the weights updated on applied updates only (bias-corrected by default:
harness.engine.schedule).

Everything a run needs to continue lives in `run_dir/checkpoints/step-<N>.pt`
(harness.engine.checkpoint):
model, EMA, optimiser, schedule position, the data position (epoch, batch in epoch) and every RNG
state, so a run killed at any moment and restarted on the same inputs finishes with bitwise the
same weights and losses on CPU. Budgets (steps, epochs, wall-clock seconds) allow comparisons at
equal steps or at equal compute. Multi-GPU: launch with torchrun (harness.engine.distributed); the
batch
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.engine import budget, checkpoint, distributed, throughput
from harness.engine.config import TRAJECTORY_FIELDS, TrainConfig
from harness.engine.passes import as_image_set, sharded_bits_per_dim
from harness.engine.progress import LoopState, Reporter
from harness.engine.schedule import EMA, lr_at_update
from harness.errors import UserError
from models.likelihoods import nats_to_bits

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

    @classmethod
    def untrained(cls, model: nn.Module) -> "TrainResult":
        """The result of a zero-step run: the starting weights, which are also the EMA (no update
        was averaged), and zero training figures, so a cell's rows stay complete."""
        return cls(model=model.eval(), ema_model=model, steps=0, epochs=0.0, images_seen=0,
                   wall_s=0.0, train_images_per_s=0.0, skipped_updates=0, applied_updates=0,
                   peak_memory_bytes=0, stopped_because="max_steps",
                   final_loss_bits_per_dim=float("nan"), resumed_from_step=None,
                   checkpoint_path=None)

    def metric_rows(self) -> list[dict[str, Any]]:
        """Tidy metric rows (docs/results.md) for the training figures."""
        return [{"metric": "train_images_per_s", "value": self.train_images_per_s},
                {"metric": "peak_memory_bytes", "value": self.peak_memory_bytes},
                {"metric": "skipped_updates", "value": self.skipped_updates},
                {"metric": "steps", "value": self.steps},
                {"metric": "train_wall_s", "value": self.wall_s}]


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


def skip_reason(config: TrainConfig, loss_bits: float, grad_norm: float) -> str:
    """Why this update must be skipped ("nonfinite", "grad_norm"), or "" to apply it."""
    if not (math.isfinite(loss_bits) and math.isfinite(grad_norm)):
        return "nonfinite"
    if config.skip_threshold is not None and grad_norm >= config.skip_threshold:
        return "grad_norm"
    return ""


def _skip_error(config: TrainConfig, state: LoopState, path: Path) -> UserError:
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


class _Run:
    """One training run's moving parts (model, DDP wrapper, optimiser, EMA, loop counters,
    reporter) and the named steps of its loop; `train` below is the loop itself."""

    def __init__(self, model: nn.Module, train_images, config: TrainConfig, run_dir: Path):
        self.config, self.train_images = config, train_images
        self.info = distributed.env_info()
        self.device = resolve_device(config.device, self.info.local_rank)
        self.info = distributed.setup(self.device.type)
        info, device = self.info, self.device
        if config.batch_size % info.world_size:
            raise UserError(f"train.batch_size ({config.batch_size}) must be a multiple of the "
                            f"number of processes ({info.world_size}): it is the global batch")
        self.steps_per_epoch = train_images.shape[0] // config.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"train.batch_size ({config.batch_size}) exceeds the "
                            f"{train_images.shape[0]} training images; lower it")
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.tf32
            torch.backends.cudnn.allow_tf32 = config.tf32
            throughput.reset_peak_memory(device)

        self.model = model.to(device).train()
        self.forward: nn.Module = _LossForward(model)
        if info.enabled:
            self.forward = nn.parallel.DistributedDataParallel(
                self.forward, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=config.ddp_find_unused_parameters)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # The fused kernel: one pass over each parameter instead of a chain of foreach ops, the
        # same update to float rounding.
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay,
                                           fused=device.type in ("cpu", "cuda"))
        self.ema = EMA(model, config.ema_rate, config.ema_bias_correction)

        self.ckpt_dir, log_path = run_dir / "checkpoints", run_dir / "train_log.jsonl"
        if info.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        loop = checkpoint.resume_training(
            self.ckpt_dir, log_path, model=model, ema=self.ema, optimizer=self.optimizer,
            config=config, info=info, device=device, trajectory_fields=TRAJECTORY_FIELDS)
        self.state = LoopState() if loop is None else LoopState(**loop)
        self.resumed_from = self.last_saved = None if loop is None else self.state.step
        self.total_steps = budget.total_steps(config, self.steps_per_epoch)
        self.reporter = Reporter(config, log_path, info.is_main, self.total_steps)
        self.reporter.start(self.state.step)
        self.rows = distributed.local_slice(config.batch_size, info)  # this rank's share
        self.permutation, self.permutation_epoch = None, -1
        self.segment_start, self.wall_before = time.perf_counter(), self.state.wall_s

    # ----------------------------------------------------------------- the loop's steps

    def budget_reached(self) -> str | None:
        state = self.state
        return budget.budget_reached(self.config, state.step, state.epochs(self.steps_per_epoch),
                                     state.wall_s)

    def roll_epoch(self) -> None:
        """Start the next epoch when this one is used up; its data order on first use."""
        state = self.state
        if state.batch_in_epoch >= self.steps_per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if self.permutation_epoch != state.epoch:
            self.permutation = epoch_permutation(self.config.seed, state.epoch,
                                                 self.train_images.shape[0])
            self.permutation_epoch = state.epoch

    def next_batch(self) -> torch.Tensor:
        """This rank's share of the global batch at the data position, uint8 (n, C, H, W)."""
        first = self.state.batch_in_epoch * self.config.batch_size
        indices = self.permutation[first:first + self.config.batch_size][self.rows]
        return self.train_images[indices].to(self.device, non_blocking=True)

    def set_lr(self) -> float:
        config = self.config
        lr = lr_at_update(self.state.step + 1, base_lr=config.lr,
                          warmup_steps=config.warmup_steps, schedule=config.lr_schedule,
                          total_steps=config.max_steps, final_fraction=config.lr_final_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def forward_backward(self, batch: torch.Tensor) -> tuple[float, float]:
        """Gradients of the mean per-image loss; (global loss in bits/dim, pre-clip grad norm)."""
        config, device = self.config, self.device
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
            per_image = self.forward(batch)["loss_nats_per_dim"]  # (n,)
        per_image = per_image.float()
        per_image.mean().backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, config.grad_clip if config.grad_clip is not None else float("inf"))
        elapsed = time.perf_counter() - self.segment_start
        # One collective per step: global loss sum, image count, and the mean elapsed time
        # (so every rank takes the same wall-clock stopping decision).
        stats = torch.stack([per_image.detach().double().sum(),
                             torch.tensor(float(per_image.numel()), dtype=torch.float64,
                                          device=device),
                             torch.tensor(elapsed, dtype=torch.float64, device=device)])
        stats = distributed.all_reduce_sum(stats, self.info).tolist()
        self.state.wall_s = self.wall_before + stats[2] / self.info.world_size
        return float(nats_to_bits(stats[0] / stats[1])), float(grad_norm)

    def apply_or_skip(self, reason: str) -> None:
        state = self.state
        if reason:
            state.skipped_updates += 1
            state.consecutive_skips += 1
            state.last_skip_reason = reason
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.ema.update()
            state.applied_updates += 1
            state.consecutive_skips = 0

    def report(self, reason: str, loss_bits: float, grad_norm: float, lr: float) -> None:
        """Skip rows and messages, and every `log_every_steps` a train row and progress."""
        state, reporter = self.state, self.reporter
        if reason:
            reporter.row({"type": "skip", "step": state.step, "reason": reason,
                          "grad_norm": grad_norm, "loss_bits_per_dim": loss_bits})
            reporter.message(f"step {state.step}: update skipped ({reason}; grad norm "
                             f"{grad_norm:.4g}, loss {loss_bits:.4g} bits/dim); "
                             f"{state.skipped_updates} skipped in total")
        if state.step % self.config.log_every_steps == 0:
            row = state.train_row(lr, self.steps_per_epoch)
            reporter.row(row)
            reporter.progress(row, budget.eta_s(self.config, state.step, state.wall_s,
                                                self.total_steps))

    def validate_if_due(self, val_images) -> None:
        config = self.config
        if val_images is None or not config.val_every_steps \
                or self.state.step % config.val_every_steps:
            return
        values, n_val = sharded_bits_per_dim(
            {"raw": self.model, "ema": self.ema.module()}, val_images, config.val_batch_size,
            config.val_max_images, config.seed, self.info)
        for weights, bits in values.items():
            self.reporter.row({"type": "val", "step": self.state.step, "weights": weights,
                               "bits_per_dim": bits, "split": "validation", "n_images": n_val})

    def save(self) -> Path:
        state = self.state
        state.peak_memory_bytes = max(state.peak_memory_bytes,
                                      throughput.peak_memory_bytes(self.device))
        self.last_saved = state.step
        return checkpoint.save_training_checkpoint(
            self.ckpt_dir, loop=dataclasses.asdict(state), model=self.model, ema=self.ema,
            optimizer=self.optimizer, config=self.config, info=self.info, device=self.device)

    def checkpoint_if_due(self) -> None:
        """Stop (saved) after `max_consecutive_skips` skipped updates in a row; save every
        `checkpoint_every_steps`."""
        config, state = self.config, self.state
        if state.consecutive_skips >= config.max_consecutive_skips:
            raise _skip_error(config, state, self.save())
        if config.checkpoint_every_steps and state.step % config.checkpoint_every_steps == 0:
            self.save()

    def result(self, stopped_because: str) -> TrainResult:
        state = self.state
        self.model.eval()
        state.peak_memory_bytes = max(state.peak_memory_bytes,
                                      throughput.peak_memory_bytes(self.device))
        return TrainResult(
            model=self.model, ema_model=self.ema.module(), steps=state.step,
            epochs=state.epochs(self.steps_per_epoch), images_seen=state.images_seen,
            wall_s=state.wall_s,
            train_images_per_s=state.images_seen / state.step_time_s if state.step_time_s
            else 0.0,
            skipped_updates=state.skipped_updates, applied_updates=state.applied_updates,
            peak_memory_bytes=state.peak_memory_bytes, stopped_because=stopped_because,
            final_loss_bits_per_dim=state.last_loss_bits_per_dim,
            resumed_from_step=self.resumed_from,
            checkpoint_path=checkpoint.checkpoint_path(self.ckpt_dir, state.step))


def train(model: nn.Module, train_images, config: TrainConfig, run_dir: Path, *,
          val_images=None) -> TrainResult:
    """Train `model` on uint8 images (N, C, H, W) until a budget in `config` is reached.

    Resumes from the newest good checkpoint in `run_dir/checkpoints` when there is one. Only the
    sampled batch of `train_images` is read and converted per step (memory-mapped input stays on
    disk). Raises UserError when updates are skipped `max_consecutive_skips` times in a row.
    `max_steps` 0 trains nothing and writes nothing: the model comes back on the device, as is.
    """
    if config.max_steps == 0:
        device = resolve_device(config.device, distributed.env_info().local_rank)
        return TrainResult.untrained(model.to(device))
    train_images = as_image_set(train_images, "train_images")
    if val_images is not None:
        val_images = as_image_set(val_images, "val_images")
    run = _Run(model, train_images, config, Path(run_dir))
    try:
        while (stopped_because := run.budget_reached()) is None:
            run.roll_epoch()
            step_start = time.perf_counter()
            batch = run.next_batch()
            lr = run.set_lr()
            loss_bits, grad_norm = run.forward_backward(batch)
            reason = skip_reason(config, loss_bits, grad_norm)
            run.apply_or_skip(reason)
            run.state.record(loss_bits, grad_norm, config.batch_size,
                             time.perf_counter() - step_start)
            run.report(reason, loss_bits, grad_norm, lr)
            run.validate_if_due(val_images)
            run.checkpoint_if_due()
        if run.last_saved != run.state.step:
            run.save()
    finally:
        run.reporter.close()
    return run.result(stopped_because)
