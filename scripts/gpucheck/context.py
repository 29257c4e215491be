"""What every section is told: where to write, which device, the sizes, the plan's counts, and
the bf16 matmul peak measured earlier in the same run (for the fraction-of-peak figures)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpucheck.plan import Sizes, skip_reason
from gpucheck.record import Skip


@dataclass(frozen=True)
class Context:
    out: Path
    device: str                      # "cuda" or "cpu" (--allow-cpu)
    quick: bool
    gpus: int                        # CUDA devices visible (0 on a CPU)
    sizes: Sizes
    costs: dict = field(default_factory=dict)   # plan.count_costs, {} when the plan failed

    def folder(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def refuse_if_meaningless(self, name: str, gpus: int | None = None) -> None:
        """Raise Skip when section `name` has no meaning here (plan.skip_reason)."""
        reason = skip_reason(name, self.device, self.gpus if gpus is None else gpus)
        if reason is not None:
            raise Skip(reason)

    @staticmethod
    def exact_float32() -> None:
        """TF32 off for matmuls and convolutions (cuDNN's default is on), as the trainer sets it
        for float32 training: call inside `record.restored()`."""
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def figure(self, section: str, name: str) -> float | None:
        """A figure an earlier section of this run recorded, or None."""
        try:
            record = json.loads((self.out / "sections" / f"{section}.json").read_text())
            value = record["figures"][name]["value"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return None if value is None else float(value)

    def bf16_peak_flop_per_s(self) -> float | None:
        """The bf16 matmul rate the `peak` section measured in this run, or None."""
        value = self.figure("peak", "bf16_matmul_tflop_per_s")
        return None if value is None else value * 1e12

    def train_flops_per_image(self, preset: str) -> float | None:
        """FLOPs of one training step per image (three forward passes), from the plan."""
        forward = self.costs.get(f"vdvae_forward:{preset}")
        return 3.0 * forward["flops"] if forward else None
