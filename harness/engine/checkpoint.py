"""Training checkpoints: `checkpoints/step-<N>.pt` plus a `step-<N>.pt.sha256` sidecar.

A training checkpoint holds the model, the EMA, the optimiser, the schedule position, the loop
counters (step, data position (epoch, batch in epoch), skip counts, clocks), the config, and the
RNG states of every rank (torch CPU and CUDA, numpy, random), so that a resumed run continues
exactly where the uninterrupted one would be.

Each file is written atomically through `harness.atomic` (temporary file, fsync, rename), then its
sidecar; a reader therefore sees complete files only. Loading verifies the sidecar (when present)
and loads with `torch.load(..., weights_only=True)`, so a checkpoint holds tensors and plain
Python values only. A checkpoint that fails either check is reported in one warning line naming
the file, renamed to `*.corrupt` (kept for inspection, out of the way of later pruning), and the
previous one is tried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import atomic
from harness.engine import distributed
from harness.errors import UserError

_NAME = re.compile(r"^step-(\d+)\.pt$")
_STALE_TEMP = re.compile(r"^\.step-\d+\.pt(\.sha256)?\..*\.tmp$")


@dataclass(frozen=True)
class LoadedCheckpoint:
    step: int
    path: Path
    state: dict[str, Any]


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step}.pt"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step-<N>.pt` in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `step-<step>.pt` and its sha256 sidecar atomically; keep the newest `keep`."""
    assert keep >= 1, keep
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = checkpoint_path(directory, step)
    atomic.write_bytes(path, data)
    atomic.write_text(_sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    prune_checkpoints(directory, keep)
    return path


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (and their sidecars)."""
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files left by a writer that was killed mid-write (see harness.atomic)."""
    directory = Path(directory)
    if directory.is_dir():
        for entry in directory.iterdir():
            if _STALE_TEMP.match(entry.name):
                entry.unlink(missing_ok=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Verify and load one checkpoint; raises ValueError with the reason when it is unusable."""
    path = Path(path)
    data = path.read_bytes()
    sidecar = _sidecar(path)
    if sidecar.exists():
        expected = sidecar.read_text(encoding="utf-8").split()
        actual = hashlib.sha256(data).hexdigest()
        if not expected or expected[0] != actual:
            raise ValueError(f"sha256 {actual[:12]}… does not match {sidecar.name}")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, unpickling refused, ...: all mean "unusable"
        raise ValueError(f"torch.load failed: {type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]}") from error
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("not a training checkpoint (no 'step' entry)")
    return state


def load_latest_checkpoint(directory: Path, *, quarantine: bool = True) -> LoadedCheckpoint | None:
    """The newest checkpoint that verifies and loads, or None when there is none.

    Unusable ones are reported with one warning line each and (with `quarantine`) renamed to
    `<name>.corrupt` so that pruning never keeps them in place of good ones.
    """
    for step, path in reversed(list_checkpoints(directory)):
        try:
            state = read_checkpoint(path)
        except (ValueError, OSError) as error:
            warnings.warn(f"checkpoint {path} is unusable ({error}); falling back to the "
                          f"previous one", stacklevel=2)
            if quarantine:
                os.replace(path, path.with_name(path.name + ".corrupt"))
                sidecar = _sidecar(path)
                if sidecar.exists():
                    os.replace(sidecar, sidecar.with_name(sidecar.name + ".corrupt"))
            continue
        return LoadedCheckpoint(step=step, path=path, state=state)
    return None


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG state a training step may draw from, as tensors and plain values (so that
    `weights_only=True` loading accepts it): torch CPU, CUDA (when in use), numpy, random."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    cuda = []
    if device is not None and torch.device(device).type == "cuda":
        cuda = [state.clone() for state in torch.cuda.get_rng_state_all()]
    return {"torch_cpu": torch.get_rng_state().clone(), "torch_cuda": cuda,
            "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype("int64")),
                      "position": int(position), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
            "python": {"version": int(version), "internal": [int(v) for v in internal],
                       "gauss_next": gauss_next}}


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]),
                     python_state["gauss_next"]))


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch (all devices), numpy's global generator and `random` for one rank: each rank
    gets its own stream, derived from (seed, rank) by numpy's SeedSequence."""
    derived = int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)


def save_training_checkpoint(directory: Path, *, loop: dict[str, Any], model, ema, optimizer,
                             config, info: distributed.DistInfo, device: torch.device) -> Path:
    """Write `step-<loop['step']>.pt` with every rank's RNG state; rank 0 writes, all ranks wait.
    Collective: every rank must call it. `config` is the run's TrainConfig."""
    rng = distributed.all_gather_object(capture_rng_state(device), info)
    payload = {"step": loop["step"], "loop": loop, "model": model.state_dict(),
               "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": {"kind": config.lr_schedule, "next_update": loop["step"] + 1},
               "config": dataclasses.asdict(config), "rng_per_rank": rng,
               "world_size": info.world_size}
    path = checkpoint_path(directory, loop["step"])
    if info.is_main:
        save_checkpoint(directory, loop["step"], payload, config.keep_checkpoints)
    distributed.barrier(info)
    return path


def resume_training(directory: Path, log_path: Path, *, model, ema, optimizer, config,
                    info: distributed.DistInfo, device: torch.device,
                    trajectory_fields: tuple[str, ...]) -> dict[str, Any] | None:
    """Load the newest good checkpoint into model, EMA, optimiser and this rank's RNGs and return
    its loop counters; or seed a fresh run (from config.seed and the rank) and return None.

    The log keeps only rows up to the checkpoint's step: the resumed run writes later ones again,
    so its log equals an uninterrupted run's. Changed `trajectory_fields` are warned about.
    Collective: every rank must call it.
    """
    saved = _find_run_checkpoint(directory, info)
    step = 0
    if saved is None:
        seed_everything(config.seed, info.rank)
    else:
        step = saved["step"]
        changed = [name for name in trajectory_fields if name in saved["config"]
                   and _plain(saved["config"][name]) != _plain(getattr(config, name))]
        if changed and info.is_main:
            warnings.warn(f"resuming from step {step} in {directory} with changed train "
                          f"settings: {', '.join(changed)}; the run is no longer identical to "
                          f"an uninterrupted one", stacklevel=3)
        try:
            model.load_state_dict(saved["model"])
            ema.load_state_dict(saved["ema"])
            optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError, AssertionError) as error:
            raise UserError(f"the checkpoint of step {step} in {directory} does not fit this "
                            f"model ({type(error).__name__}: {str(error)[:200]}); train into a "
                            f"new results folder or delete that checkpoints folder") from error
        restore_run_rng(saved, info, device, fallback_seed=config.seed + step)
    if info.is_main and Path(log_path).exists():
        try:
            rows = [row for row in atomic.read_jsonl(log_path)
                    if isinstance(row, dict) and row.get("step", 0) <= step]
        except ValueError as error:
            raise UserError(f"{error}; fix or delete that line and resume") from error
        atomic.write_text(log_path, "".join(json.dumps(row, sort_keys=True, default=str) + "\n"
                                            for row in rows))
    distributed.barrier(info)
    return None if saved is None else saved["loop"]


def _plain(value):
    return tuple(value) if isinstance(value, list) else value


def _find_run_checkpoint(directory: Path, info: distributed.DistInfo) -> dict[str, Any] | None:
    """The newest good checkpoint's state on every rank (rank 0 chooses, reports bad ones and
    clears stale temporaries; the others load the file it names), or None. Collective."""
    chosen = None
    if info.is_main:
        Path(directory).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory)
        loaded = load_latest_checkpoint(directory)
        chosen = None if loaded is None else (str(loaded.path), loaded.state)
    if not info.enabled:
        return None if chosen is None else chosen[1]
    path = distributed.broadcast_object(None if chosen is None else chosen[0], info)
    if path is None:
        return None
    return chosen[1] if info.is_main else read_checkpoint(Path(path))


def restore_run_rng(state: dict[str, Any], info: distributed.DistInfo, device: torch.device,
                    fallback_seed: int) -> None:
    """This rank's RNG state from a checkpoint; reseeded (with a warning) when the checkpoint was
    written by a different number of processes."""
    if state["world_size"] == info.world_size:
        restore_rng_state(state["rng_per_rank"][info.rank], device)
        return
    if info.is_main:
        warnings.warn(f"checkpoint of step {state['step']} was written by {state['world_size']} "
                      f"processes, now {info.world_size}: RNG streams restart from a seed",
                      stacklevel=3)
    seed_everything(fallback_seed, info.rank)
