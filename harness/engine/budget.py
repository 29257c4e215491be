"""Training budgets: when a run stops, how many steps that is, and the time left.

The one place that turns `TrainConfig`'s budgets (max_steps, max_epochs, max_wall_s) into step
counts: the trainer stops by it and the plan (harness.run.plan) estimates by it. No torch.
"""

from __future__ import annotations

import math

from harness.engine.config import TrainConfig


def total_steps(config: TrainConfig, steps_per_epoch: int | None) -> int | None:
    """Steps the run will make (None when only a wall-clock budget bounds it, or when
    `max_epochs` binds and the epoch length is unknown)."""
    limits = [] if config.max_steps is None else [config.max_steps]
    if config.max_epochs is not None and steps_per_epoch:
        limits.append(math.ceil(config.max_epochs * steps_per_epoch))
    return min(limits) if limits else None


def steps_per_epoch(config: TrainConfig, n_train_images: int | None) -> int | None:
    return None if not n_train_images else n_train_images // config.batch_size


def budget_reached(config: TrainConfig, step: int, epochs: float, wall_s: float) -> str | None:
    """The name of the first budget reached after `step` steps, `epochs` epochs and `wall_s`
    seconds of training, or None."""
    if config.max_steps is not None and step >= config.max_steps:
        return "max_steps"
    if config.max_epochs is not None and epochs >= config.max_epochs - 1e-12:
        return "max_epochs"
    if config.max_wall_s is not None and wall_s >= config.max_wall_s:
        return "max_wall_s"
    return None


def eta_s(config: TrainConfig, step: int, wall_s: float, total: int | None) -> float | None:
    """Seconds left until the first budget that binds, at the run's mean pace so far."""
    candidates = []
    if total is not None and step:
        candidates.append(max(0, total - step) * wall_s / step)
    if config.max_wall_s is not None:
        candidates.append(max(0.0, config.max_wall_s - wall_s))
    return min(candidates) if candidates else None
