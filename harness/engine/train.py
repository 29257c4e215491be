"""One training loop for every model family that returns a per-image loss.

Implements the VDVAE training recipe (Child 2021 and its reference implementation; see
../shared/spec/vdvae.md "Training recipe"): AdamW, linear LR warm-up, gradient-norm clipping,
**update skipping** when the pre-clip gradient norm reaches `skip_threshold` or the loss is not
finite, and an EMA of the weights updated on applied updates only (bias-corrected by default:
harness.engine.schedule).

Everything a run needs to continue lives in `run_dir/checkpoints/step-<N>.pt` (harness.engine.checkpoint):
model, EMA, optimiser, schedule position, the data position (epoch, batch in epoch) and every RNG
state, so a run killed at any moment and restarted on the same inputs finishes with bitwise the
same weights and losses on CPU. Budgets (steps, epochs, wall-clock seconds) allow comparisons at
equal steps or at equal compute. Multi-GPU: launch with torchrun (harness.engine.distributed); the batch
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import atomic
from harness.engine import budget, checkpoint, distributed, throughput
from harness.engine.config import TRAJECTORY_FIELDS, TrainConfig
from harness.engine.evaluate import as_image_set, sharded_bits_per_dim
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
    peak_memory_bytes: int = 0  # the largest of all segments of a resumed run
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

    def epochs(self, steps_per_epoch: int) -> float:
        return self.epoch + self.batch_in_epoch / steps_per_epoch

    def record(self, loss_bits: float, grad_norm: float, images: int, step_s: float) -> None:
        """Count one finished iteration (applied or skipped)."""
        self.step += 1
        self.batch_in_epoch += 1
        self.images_seen += images
        self.last_loss_bits_per_dim, self.last_grad_norm = loss_bits, grad_norm
        self.step_time_s += step_s
        self.interval_time_s += step_s
        self.interval_images += images
        if math.isfinite(loss_bits):
            self.interval_loss_sum += loss_bits
            self.interval_loss_count += 1
        if math.isfinite(grad_norm):
            self.interval_grad_norm_sum += grad_norm
            self.interval_grad_norm_count += 1

    def train_row(self, lr: float, steps_per_epoch: int) -> dict[str, Any]:
        """The log row of the interval since the previous one (means of finite values); resets
        the interval."""
        nan = float("nan")
        row = {"type": "train", "step": self.step,
               "epoch": self.epoch + self.batch_in_epoch / steps_per_epoch,
               "images_seen": self.images_seen,
               "loss_bits_per_dim": self.interval_loss_sum / self.interval_loss_count
               if self.interval_loss_count else nan,
               "lr": lr,
               "grad_norm": self.interval_grad_norm_sum / self.interval_grad_norm_count
               if self.interval_grad_norm_count else nan,
               "skipped_updates_total": self.skipped_updates,
               "images_per_s": self.interval_images / max(self.interval_time_s, 1e-9),
               "wall_s": self.wall_s}
        self.interval_loss_sum = self.interval_grad_norm_sum = self.interval_time_s = 0.0
        self.interval_loss_count = self.interval_grad_norm_count = self.interval_images = 0
        return row


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


def _save(ckpt_dir, model, ema, optimizer, state: _LoopState, config: TrainConfig, info,
          device) -> Path:
    state.peak_memory_bytes = max(state.peak_memory_bytes, throughput.peak_memory_bytes(device))
    return checkpoint.save_training_checkpoint(
        ckpt_dir, loop=dataclasses.asdict(state), model=model, ema=ema, optimizer=optimizer,
        config=config, info=info, device=device)


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
    `max_steps` 0 trains nothing and writes nothing: the model comes back on the device, as is.
    """
    if config.max_steps == 0:
        device = resolve_device(config.device, distributed.env_info().local_rank)
        return TrainResult.untrained(model.to(device))
    train_images = as_image_set(train_images, "train_images")
    if val_images is not None:
        val_images = as_image_set(val_images, "val_images")
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
    loop = checkpoint.resume_training(ckpt_dir, log_path, model=model, ema=ema,
                                      optimizer=optimizer, config=config, info=info,
                                      device=device, trajectory_fields=TRAJECTORY_FIELDS)
    state = _LoopState() if loop is None else _LoopState(**loop)
    resumed_from = last_saved = None if loop is None else state.step
    total_steps = budget.total_steps(config, steps_per_epoch)
    reporter = _Reporter(config, log_path, info.is_main, total_steps)
    reporter.start(state.step)
    rows = distributed.local_slice(config.batch_size, info)
    permutation, permutation_epoch = None, -1
    segment_start, wall_before = time.perf_counter(), state.wall_s
    stopped_because = None
    try:
        while True:
            stopped_because = budget.budget_reached(config, state.step, state.epochs(steps_per_epoch),
                                                    state.wall_s)
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

            state.record(loss_bits, grad_norm, config.batch_size,
                         time.perf_counter() - step_start)
            if skip_reason:
                reporter.row({"type": "skip", "step": state.step, "reason": skip_reason,
                              "grad_norm": grad_norm, "loss_bits_per_dim": loss_bits})
                reporter.message(f"step {state.step}: update skipped ({skip_reason}; grad norm "
                                 f"{grad_norm:.4g}, loss {loss_bits:.4g} bits/dim); "
                                 f"{state.skipped_updates} skipped in total")
            if state.step % config.log_every_steps == 0:
                row = state.train_row(lr, steps_per_epoch)
                reporter.row(row)
                reporter.progress(row, budget.eta_s(config, state.step, state.wall_s, total_steps))

            if val_images is not None and config.val_every_steps and \
                    state.step % config.val_every_steps == 0:
                values, n_val = sharded_bits_per_dim(
                    {"raw": model, "ema": ema.module()}, val_images, config.val_batch_size,
                    config.val_max_images, config.seed, info)
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
    state.peak_memory_bytes = max(state.peak_memory_bytes, throughput.peak_memory_bytes(device))
    return TrainResult(
        model=model, ema_model=ema.module(), steps=state.step,
        epochs=state.epoch + state.batch_in_epoch / steps_per_epoch,
        images_seen=state.images_seen, wall_s=state.wall_s,
        train_images_per_s=state.images_seen / state.step_time_s if state.step_time_s else 0.0,
        skipped_updates=state.skipped_updates, applied_updates=state.applied_updates,
        peak_memory_bytes=state.peak_memory_bytes, stopped_because=stopped_because,
        final_loss_bits_per_dim=state.last_loss_bits_per_dim, resumed_from_step=resumed_from,
        checkpoint_path=checkpoint.checkpoint_path(ckpt_dir, state.step))
