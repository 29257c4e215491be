"""Run one child process within a time budget and stop it cleanly past it.

The child starts in its own session, so the budget stops everything it started: `harness run`
and its job processes, torchrun (which passes SIGTERM on to its ranks, themselves in sessions of
their own). SIGTERM first, SIGKILL to whatever is left after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 15.0


@dataclass(frozen=True)
class Ended:
    returncode: int | None
    timed_out: bool
    wall_s: float


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(process: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after `grace_s`."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def run(command: list[str], log: Path, budget_s: float, cwd: Path,
        env: dict[str, str] | None = None) -> Ended:
    """Run `command` (output to `log`) for at most `budget_s` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            process.wait(timeout=max(budget_s, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            stop(process)
        except BaseException:  # Ctrl-C in the parent: take the child's processes down too
            stop(process)
            raise
        # Anything the child left running in its group goes with it.
        _signal_group(process.pid, signal.SIGKILL)
    return Ended(process.returncode, timed_out, time.monotonic() - start)


def tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])
