"""The `distributed` section: a process group is always made, even of one rank.

`distributed.setup` joins no group at world size 1 (an ordinary run is one process), so on a
machine with one GPU the harness never starts NCCL by itself. Here torchrun starts one rank per
GPU (two on a CPU, over gloo) and each rank (`run_rank`, in `python -m gpucheck.rank_main`)
creates the group itself, then through it: an all-reduce of known values, one
DistributedDataParallel step compared with the same step of one process on the whole batch, and
two steps of the harness's trainer. Each rank writes what it saw to `rank<r>.json`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from gpucheck import synthetic
from gpucheck.context import Context
from gpucheck.record import Record
from harness.engine import distributed
from harness.engine.config import TrainConfig
from harness.engine.train import train
from models import registry

REPO = synthetic.REPO
DDP_TOLERANCE = 1e-5  # max |parameter difference| after one SGD step, float32 with TF32 off
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT", "TORCHELASTIC_RUN_ID", "GROUP_RANK")


class _Loss(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.loss(images)["loss_nats_per_dim"].mean()


def all_reduce_total(rank: int, device: torch.device) -> float:
    """Sum over the ranks of rank + 1: W(W + 1)/2 when the all-reduce works."""
    value = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(value)
    return float(value.item())


def _ddp_difference(info: distributed.DistInfo, device: torch.device) -> float:
    """Max |parameter| difference between one DDP step (each rank on its slice of the global
    batch) and the same SGD step of one process on the whole batch."""
    family = registry.get("pixelcnn")
    torch.manual_seed(0)
    model = family.build_model(family.build_config("tiny")).to(device)
    alone = copy.deepcopy(model)
    batch = 2 * info.world_size
    images = synthetic.images(batch, family.image_shape(model.config), seed=5).to(device)
    ddp = nn.parallel.DistributedDataParallel(
        _Loss(model), device_ids=[device.index] if device.type == "cuda" else None)
    for module, data in ((ddp, images[distributed.local_slice(batch, info)]), (_Loss(alone),
                                                                               images)):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
        module(data).backward()
        optimizer.step()
    with torch.no_grad():
        return max(float((a - b).abs().max()) for a, b in zip(model.parameters(),
                                                              alone.parameters()))


def run_rank(out: Path, device_type: str) -> None:
    info = distributed.env_info()
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    else:
        device = torch.device("cpu")
    # This process's own settings: exact float32, so the DDP step can be compared closely.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    start = time.perf_counter()
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    joined = distributed.setup(device_type)  # the harness's view: the group made above
    total = all_reduce_total(joined.rank, device)
    started_s = time.perf_counter() - start
    difference = _ddp_difference(joined, device)
    family = registry.get("pixelcnn")
    torch.manual_seed(0)
    trained = train(family.build_model(family.build_config("tiny")),
                    synthetic.images(8 * joined.world_size, (3, 8, 8), seed=6),
                    TrainConfig(batch_size=2 * joined.world_size, max_steps=2, warmup_steps=1,
                                checkpoint_every_steps=0, progress="off", device=device_type,
                                log_every_steps=1), out / "train")
    seen = {"rank": joined.rank, "world_size": joined.world_size,
            "local_rank": joined.local_rank, "backend": dist.get_backend(),
            "device": str(device), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "all_reduce_total": total, "group_start_s": started_s,
            "ddp_max_abs_difference": difference, "trainer_steps": trained.steps,
            "trainer_final_loss_bits_per_dim": trained.final_loss_bits_per_dim}
    (out / f"rank{joined.rank}.json").write_text(json.dumps(seen, indent=1))
    dist.barrier()
    distributed.teardown()


def section(record: Record, context: Context) -> None:
    cuda = context.device == "cuda"
    ranks = max(1, context.gpus) if cuda else 2
    folder = context.folder("distributed")
    for old in folder.glob("rank*.json"):
        old.unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", "-m", "gpucheck.rank_main", str(folder),
               context.device]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env["PYTHONPATH"] = synthetic.python_path(REPO, REPO / "scripts")
    if not cuda:
        env["OMP_NUM_THREADS"] = "1"
    record.set("command", " ".join(command))
    log = folder / "torchrun.log"
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=handle,
                              stderr=subprocess.STDOUT, check=False)
    record.figure("torchrun_s", time.perf_counter() - start, "s",
                  f"torchrun of {ranks} rank(s): group, all-reduce, DDP step, 2 trainer steps")
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-6:])
    record.check("torchrun_exit_status", done.returncode == 0,
                 f"torchrun exited {done.returncode}; log {log}: {tail}")
    seen = [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]
    record.set("ranks", seen)
    record.check("every_rank_reported", len(seen) == ranks,
                 f"{len(seen)} of {ranks} rank(s) wrote what they saw")
    if not seen:
        return
    backend = "nccl" if cuda else "gloo"
    record.check("backend", all(r["backend"] == backend and r["world_size"] == ranks
                                for r in seen),
                 f"backends {[r['backend'] for r in seen]}, world sizes "
                 f"{[r['world_size'] for r in seen]} (expected {backend}, {ranks})")
    expected = ranks * (ranks + 1) / 2
    totals = [r["all_reduce_total"] for r in seen]
    record.check("all_reduce", all(t == expected for t in totals),
                 f"each rank summed {totals}, expected {expected:g}")
    worst = max(r["ddp_max_abs_difference"] for r in seen)
    record.figure("ddp_max_abs_difference", worst, "parameter units",
                  "one DDP SGD step over the ranks against one process on the whole batch")
    record.check("ddp_matches_one_process", worst <= DDP_TOLERANCE,
                 f"max |difference| {worst:.2e} (<= {DDP_TOLERANCE:g})")
    record.figure("group_start_s", max(r["group_start_s"] for r in seen), "s",
                  f"init_process_group ({backend}) and the first all-reduce, slowest rank")
    record.check("trainer_steps", all(r["trainer_steps"] == 2 for r in seen),
                 f"the harness trainer ran {[r['trainer_steps'] for r in seen]} steps on the "
                 "ranks (expected 2 each)")
    if cuda:
        devices = [r["device"] for r in seen]
        record.check("one_device_per_rank", len(set(devices)) == len(devices),
                     f"ranks on {devices}")
