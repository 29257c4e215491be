"""Shared test settings: one torch thread (CI has 2 cores and runs several tests' worth of work),
deterministic seeds, and the path of the reference vectors in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from slurm_cluster import missing_reason, start_cluster

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_shared() -> Path | None:
    env = os.environ.get("HARNESS_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared", REPO_ROOT / "shared"]
    for candidate in candidates:
        if (candidate / "vdvae_reference").is_dir():
            return candidate
    return None


SHARED = _find_shared()


@pytest.fixture
def reference_dir() -> Path:
    """../shared/vdvae_reference (the golden vectors); skipped with a reason when absent."""
    if SHARED is None:
        # CI lays shared/ beside the clone: there a missing folder is a failure, not a skip,
        # so the golden tests can never pass by not running.
        if os.environ.get("CI"):
            pytest.fail("../shared/vdvae_reference not found in CI (set HARNESS_SHARED)")
        pytest.skip("../shared/vdvae_reference not found (set HARNESS_SHARED)")
    return SHARED / "vdvae_reference"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm cluster on this machine (tests/slurm_cluster.py), for the whole session;
    SLURM_CONF points the client commands at it. Skipped with a reason when Slurm is absent."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
