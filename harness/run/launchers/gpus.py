"""Local GPUs: which devices each parallel job of `harness run` gets.

With `runner.jobs: N` on a machine with GPUs every job slot owns its own devices, exported to
its process as `CUDA_VISIBLE_DEVICES` (from `runner.gpus: [..]`, else all visible ones); a cell
with `runner.gpus_per_cell: k > 1` runs under `torchrun --nproc_per_node k` on its slot's k
devices (harness.run.launchers.torchrun_cell, the same DDP code as a multi-task Slurm job).
Without GPUs there are no slots and cells run on the CPU exactly as before.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.errors import UserError


def device_slots(gpus: tuple[int, ...], jobs: int, per_cell: int) -> list[tuple[int, ...]]:
    """`min(jobs, len(gpus) // per_cell)` disjoint groups of `per_cell` devices, in order;
    [] when there are no GPUs."""
    if not gpus:
        return []
    if per_cell > len(gpus):
        raise UserError(f"runner.gpus_per_cell is {per_cell} but only {len(gpus)} GPU(s) "
                        f"({', '.join(map(str, gpus))}) are available; lower it or list more "
                        "in runner.gpus")
    slots = min(jobs, len(gpus) // per_cell)
    return [tuple(gpus[i * per_cell:(i + 1) * per_cell]) for i in range(slots)]


def usable_gpus(listed: tuple[int, ...] | None, visible: int) -> tuple[int, ...]:
    """`runner.gpus` checked against the `visible` count, or all visible ones."""
    if listed is None:
        return tuple(range(visible))
    missing = [g for g in listed if g >= visible]
    if missing:
        raise UserError(f"runner.gpus lists {missing} but this machine shows {visible} GPU(s) "
                        f"(0..{visible - 1}); fix runner.gpus")
    return tuple(listed)


def cuda_env(devices: tuple[int, ...]) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)}


def torchrun_command(job_file: Path, nproc: int) -> list[str]:
    """The command that runs one pickled cell job on `nproc` local ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "harness.run.launchers.torchrun_cell",
            str(job_file)]


def describe(devices: tuple[int, ...]) -> str:
    return ("GPU " if len(devices) == 1 else "GPUs ") + ",".join(str(d) for d in devices)
