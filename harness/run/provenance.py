"""What every cell records about how it was produced: git revision, package versions, seeds,
dataset provenance and the machine (style guide item 3: results carry config, versions, seeds)."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("vdvae-harness", "torch", "numpy", "pandas", "pillow", "pyyaml", "matplotlib")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_revision() -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the harness checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "hostname": socket.gethostname(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cores": available_cores(),
        "torch_threads": torch.get_num_threads(), "python_executable": sys.executable,
    }
    # The devices this process was given (local launcher, Slurm) and its place in a torchrun
    # group: where a multi-GPU cell's ranks ran can be read back from its results.
    info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    info["world_size"] = int(os.environ.get("WORLD_SIZE") or 1)
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = "cpu"
    return info


def cell_provenance(seeds: dict[str, Any], dataset: dict[str, Any] | None = None) -> dict:
    """The provenance.json record of one cell."""
    host = machine()
    return {"git_revision": git_revision(), "versions": package_versions(),
            "machine": host, "device": host["device"], "seeds": seeds, "dataset": dataset or {},
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
