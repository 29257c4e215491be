"""Time training steps and evaluation passes of one model in this process; run as a script by the
speed benchmarks (benchmarks/test_bench_speed.py), once with the working tree's `models` on
PYTHONPATH and once with a baseline commit's, so both are timed the same way on the same input.

    python benchmarks/step_timing.py '{"family": "vdvae", "config": {...}, "batch": 32, ...}'

Prints one JSON line: median seconds per training step (forward, backward, AdamW), per
evaluation batch (`loss` under inference mode, eval mode) and the loss of the first step (the
two trees must agree on it: the same model, the same numbers), with `models.__file__` to show
which tree ran. Imports only `models` (whichever tree is first on the path), torch and, where
that tree has it, `harness.engine.allocator`: the allocator setting its cells run under.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch


def _model(family: str, config: dict):
    if family == "vdvae":
        from models.vdvae import VDVAE, VDVAEConfig
        return VDVAE(VDVAEConfig(**config))
    if family == "pixelcnn":
        from models.pixelcnn import GatedPixelCNN, GatedPixelCNNConfig
        return GatedPixelCNN(GatedPixelCNNConfig(**config))
    raise SystemExit(f"step_timing: unknown family {family!r}")


def _median_s(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(spec: dict) -> dict:
    import models

    try:  # the tree's cells run under it (harness.run.cell); an older tree has none
        from harness.engine.allocator import keep_freed_memory
    except ImportError:
        pass
    else:
        keep_freed_memory()

    torch.set_num_threads(spec.get("threads", 1))
    torch.manual_seed(0)
    model = _model(spec["family"], spec["config"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.9),
                                  weight_decay=0.01)
    shape = model.image_shape
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (spec["batch"], *shape), dtype=torch.uint8,
                           generator=generator)
    first_loss = []

    def train_step():
        torch.manual_seed(2)  # the same posterior noise in both trees
        loss = model.loss(images)["loss_nats_per_dim"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not first_loss:
            first_loss.append(loss.item())

    result = {"models": models.__file__, "threads": torch.get_num_threads(),
              "train_step_s": _median_s(train_step, spec.get("warmup", 2), spec["steps"])}
    eval_batch = spec.get("eval_batch")
    if eval_batch:
        eval_images = torch.randint(0, 256, (eval_batch, *shape), dtype=torch.uint8,
                                    generator=generator)
        model.eval()

        def eval_batch_pass():
            with torch.inference_mode():
                model.loss(eval_images)

        result["eval_batch_s"] = _median_s(eval_batch_pass, 2, spec.get("eval_repeats", 5))
    result["first_loss"] = first_loss[0]
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
