"""Training progress: the loop's counters (saved in every checkpoint) and the reporter that
writes `train_log.jsonl` rows and shows progress (a tqdm bar on a terminal, plain lines
otherwise). Row formats: docs/results.md."""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness import atomic
from harness.engine.config import TrainConfig


@dataclass
class LoopState:
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


# The cell being trained, set by whoever runs it (harness.run): its lines and bar carry the name,
# so the stderr of parallel or consecutive cells can be told apart.
_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("progress_label",
                                                                   default=None)


@contextlib.contextmanager
def labelled(name: str) -> Iterator[None]:
    """Inside: every Reporter's lines start with `name: ` and its bar is titled `name`."""
    token = _LABEL.set(name)
    try:
        yield
    finally:
        _LABEL.reset(token)


class Reporter:
    """Rank 0's log rows and progress display (tqdm bar on a TTY, plain lines otherwise)."""

    def __init__(self, config: TrainConfig, log_path: Path, enabled: bool, total_steps: int | None):
        self.enabled = enabled
        self.log_path = log_path
        self.label = _LABEL.get()
        mode = config.progress if enabled else "off"
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self.bar = None
        if mode == "bar":
            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr,
                            desc=self.label)

    def start(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def row(self, row: dict[str, Any]) -> None:
        if self.enabled:
            atomic.append_jsonl(self.log_path, row)

    def message(self, text: str) -> None:
        if self.mode == "off":
            return
        if self.label:
            text = f"{self.label}: {text}"
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
