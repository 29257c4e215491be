"""Subprocess entry point for the resume and DDP tests: trains a tiny model into RUN_DIR and
saves the final weights, EMA weights and loss to OUT (rank 0 only).

    python tests/train_worker.py RUN_DIR OUT [--max-steps N] [--delay-s S] [--noise-std X]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train_worker.py ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import TinyConfig, TinyConvModel, realish_images  # noqa: E402

from harness.engine import distributed  # noqa: E402
from harness.engine.config import TrainConfig  # noqa: E402
from harness.engine.train import train  # noqa: E402


def worker_config(max_steps: int, **overrides) -> TrainConfig:
    fields = dict(batch_size=8, lr=1e-2, warmup_steps=3, ema_rate=0.9, max_steps=max_steps,
                  checkpoint_every_steps=5, keep_checkpoints=3, log_every_steps=1,
                  val_every_steps=5, val_batch_size=16, seed=1, device="cpu", progress="off",
                  grad_clip=50.0, skip_threshold=None)
    fields.update(overrides)
    return TrainConfig(**fields)


def run(run_dir: Path, max_steps: int, delay_s: float = 0.0, noise_std: float = 0.1,
        **overrides) -> dict:
    """Build the model from a fixed seed, train, and return what the tests compare."""
    torch.manual_seed(0)
    model = TinyConvModel(TinyConfig(noise_std=noise_std, step_delay_s=delay_s))
    images = realish_images(64, seed=3)
    val = realish_images(20, seed=4)
    result = train(model, images, worker_config(max_steps, **overrides), run_dir, val_images=val)
    return {"model": {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()},
            "ema": {k: v.detach().cpu().clone() for k, v in result.ema_model.state_dict().items()},
            "final_loss_bits_per_dim": result.final_loss_bits_per_dim, "steps": result.steps,
            "images_seen": result.images_seen, "resumed_from_step": result.resumed_from_step}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--noise-std", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    outcome = run(Path(args.run_dir), args.max_steps, args.delay_s, args.noise_std)
    if distributed.env_info().is_main:
        torch.save(outcome, args.out)
    distributed.teardown()


if __name__ == "__main__":
    main()
