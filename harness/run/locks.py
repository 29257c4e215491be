"""Per-cell lock files, so that two runners on one results folder never run a cell twice.

A lock is claimed by creating `cells/<cell>/lock` with O_CREAT | O_EXCL (atomic on local
filesystems: exactly one creator wins) and writing the holder's pid, host and process start time
into it. A lock whose holder is on this host and no longer alive (or whose pid now belongs to a
different process) is stale and is reclaimed. A lock taken inside a Slurm job also records the job's
id: the same job after a requeue (on any node) reclaims its own earlier incarnation's lock.
Reclaiming and rebuilding the shared files happen under `fcntl.flock` on `<results>/.guard`, which
the kernel releases when its holder dies, so two runners cannot both break the same stale lock or
interleave a rebuild.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import atomic
from harness.contract import LAUNCH_FILE

LOCK_NAME = "lock"
EXIT_LOCKED = 3  # exit status of a worker process that found its cell claimed by another runner


def _process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc), to detect pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 overall: starttime
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def slurm_job_id() -> str | None:
    """This process's Slurm job id (`123_4` for an array task), None outside Slurm."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def holder_record() -> dict:
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "start_ticks": _process_start_ticks(os.getpid()), "claimed_at": time.time()}
    job = slurm_job_id()
    if job is not None:
        record["slurm_job_id"] = job
    return record


@dataclass(frozen=True)
class LockInfo:
    path: Path
    holder: dict

    def describe(self) -> str:
        return f"pid {self.holder.get('pid')} on {self.holder.get('host')}"


def read_lock(path: Path) -> dict | None:
    """The holder record, {} when the file exists but is unreadable/partial, None when absent."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def is_stale(holder: dict, path: Path | None = None, grace_s: float = 10.0) -> bool:
    """A lock is stale when its holder is on this host and dead (or its pid was reused).

    A lock file without a readable record is only stale after `grace_s` (its creator may be
    between creating and writing it). Locks held on other hosts are never judged stale here.
    """
    if not holder:
        if path is None:
            return False
        with contextlib.suppress(OSError):
            return time.time() - path.stat().st_mtime > grace_s
        return False
    job = holder.get("slurm_job_id")
    if job is not None and job == slurm_job_id() and holder.get("pid") != os.getpid():
        return True  # our own job before Slurm requeued it: that process is gone
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return True
    recorded = holder.get("start_ticks")
    current = _process_start_ticks(pid)
    return recorded is not None and current is not None and recorded != current


def held_elsewhere(directory: Path) -> bool:
    """Whether a live runner (or job) holds the lock of the cell in `directory`."""
    holder = read_lock(Path(directory) / LOCK_NAME)
    return holder is not None and not is_stale(holder, Path(directory))


@contextlib.contextmanager
def guard(root: Path, name: str = ".guard") -> Iterator[None]:
    """Exclusive `flock` on `<root>/<name>` (released by the kernel if the holder dies);
    `.guard` serialises rebuilds and lock breaking, `.speed_guard` speed measurements."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(holder_record()) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _replace(path: Path) -> bool:
    """Put this process's record in place of a stale lock atomically (the file never vanishes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, (json.dumps(holder_record()) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


class CellLock:
    """`with CellLock(cell_dir, root) as lock:` ... `lock.acquired` says whether we hold it."""

    def __init__(self, cell_dir: Path, root: Path):
        self.path = Path(cell_dir) / LOCK_NAME
        self.root = Path(root)
        self.acquired = False
        self.reclaimed_from: dict | None = None
        self.held_by: dict | None = None
        self.removed_temporaries: list[Path] = []

    def acquire(self) -> bool:
        """Claim the lock (or take over a stale one); on success the half-written temporaries
        of earlier holders in the cell's folder are deleted (`removed_temporaries`): only the
        holder writes there, except the submitting runner's LAUNCH_FILE."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if _create(self.path):
            self.acquired = True
        else:
            self._acquire_from_holder()
        if self.acquired:
            self.removed_temporaries = atomic.remove_temporaries(
                self.path.parent, recursive=True, keep=frozenset({LAUNCH_FILE}))
        return self.acquired

    def _acquire_from_holder(self) -> None:
        with guard(self.root):
            holder = read_lock(self.path)
            if holder is None:  # released between our attempt and now
                self.acquired = _create(self.path)
            elif is_stale(holder, self.path):
                # Replace the dead holder's file in one rename: unlinking it first would open a
                # gap in which another runner's O_EXCL create wins without knowing it took over.
                self.reclaimed_from = holder
                self.acquired = _replace(self.path)
            else:
                self.held_by = holder

    def release(self) -> None:
        if self.acquired:
            holder = read_lock(self.path)
            if holder and holder.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.acquired = False

    def __enter__(self) -> "CellLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
