"""A small smoke sweep for the fault trials: two tiny VDVAE cells (effective depth 1 and 5) on a
fake 28×28 MNIST, several checkpoints per cell, one PNG codec cell, and the report — each full
run takes ~5 s on one core. Helpers start it as a separate `harness run` process and compare
results folders on everything that is not a timing."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from data_fixtures import write_idx_dataset
from harness.atomic import read_jsonl
from test_runner import TINY

REPO = Path(__file__).resolve().parents[2]
TRAIN_CELLS = ("vdvae_g01_s0", "vdvae_g05_s0")
CELLS = TRAIN_CELLS + ("codec_png",)
# Columns and metrics that measure time or memory, not the model: they differ run to run.
TIMING = ("per_s", "wall", "memory")


def write_sweep(folder: Path, steps: int = 8, every: int = 2, report: bool = True,
                extra: str = "") -> Path:
    """The experiment file (and its data) in `folder`; returns the file."""
    data = folder / "data"
    if not (data / "mnist").is_dir():
        write_idx_dataset(data / "mnist", 72, 24)
    text = TINY.format(data=data, steps=steps, every=every, extra_models="")
    text = text.replace("report: false", f"report: {str(report).lower()}") + extra
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def start(path: Path, results: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = open(log, "ab") if log else subprocess.PIPE  # noqa: SIM115 - closed by the caller's GC
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--results",
                             str(results), *args], cwd=path.parent, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """A runner started from a background job (`pytest ... &`, nohup) inherits SIGINT ignored, as
    POSIX shells set it, and Python then installs no KeyboardInterrupt handler: the tests send
    Ctrl-C's signal to a runner that must hear it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with __import__("contextlib").suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    process.wait()


def summary(results: Path) -> list[dict]:
    with open(results / "summary.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)}
                for row in csv.DictReader(handle)]


def deterministic_view(results: Path, cells: tuple[str, ...] = CELLS) -> dict:
    """Everything a resumed run must reproduce exactly: the summary (timings dropped), every
    cell's non-timing metric rows and every per-image array, byte for byte."""
    view: dict = {"summary": summary(results)}
    for name in cells:
        cell = results / "cells" / name
        view[name] = sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(cell / "metrics.jsonl")
                            if not any(t in r["metric"] for t in TIMING))
        for array in sorted(cell.glob("per_image_*.npy")):
            view[f"{name}/{array.name}"] = np.load(array).tobytes()
    return view


def wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)
