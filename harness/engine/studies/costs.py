"""What the model costs: `params` and `flops_per_image` (one inference forward of one image,
counted by torch's FLOP counter: harness.engine.throughput)."""

from __future__ import annotations

import torch

from harness.engine import throughput
from harness.engine.studies.base import Study, StudyContext, register
from models import registry


def run(context: StudyContext) -> list[dict]:
    rows = [{"metric": "params", "value": registry.count_parameters(context.model)}]
    if context.config.flops:
        torch.manual_seed(context.config.noise_seed)  # a VAE's forward draws noise
        rows.append({"metric": "flops_per_image",
                     "value": throughput.flops_per_image(context.model, context.images[:1])})
    return rows


STUDY = register(Study(
    name="costs", scope="cell", run=run, writes=("params", "flops_per_image"),
    description="parameters and FLOPs per image",
    estimate_s=lambda cost, config: 2 * cost.forward_s))
