"""Per-cell locks (harness.run.locks): exclusive claims, stale locks of dead holders reclaimed."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys

from harness import atomic
from harness.contract import LAUNCH_FILE
from harness.run import locks
from harness.run.results_folder import SHARED_FILES, rebuild_shared_files


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_second_claim_fails_while_first_holds(tmp_path):
    first = locks.CellLock(tmp_path / "cells" / "a", tmp_path)
    second = locks.CellLock(tmp_path / "cells" / "a", tmp_path)
    assert first.acquire()
    assert not second.acquire()
    assert second.held_by["pid"] == os.getpid()
    first.release()
    assert not (tmp_path / "cells" / "a" / "lock").exists()
    assert second.acquire()
    second.release()


def test_lock_records_pid_and_host(tmp_path):
    with locks.CellLock(tmp_path / "c", tmp_path) as lock:
        assert lock.acquired
        record = json.loads((tmp_path / "c" / "lock").read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()


def test_stale_lock_of_dead_pid_is_reclaimed(tmp_path):
    cell = tmp_path / "cells" / "x"
    cell.mkdir(parents=True)
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "start_ticks": None}
    (cell / "lock").write_text(json.dumps(dead))
    lock = locks.CellLock(cell, tmp_path)
    assert lock.acquire()
    assert lock.reclaimed_from["pid"] == dead["pid"]
    assert json.loads((cell / "lock").read_text())["pid"] == os.getpid()


def test_reused_pid_is_stale_and_other_hosts_are_not(tmp_path):
    alive_but_reused = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": -5}
    assert locks.is_stale(alive_but_reused)
    assert not locks.is_stale(locks.holder_record())
    assert not locks.is_stale({"pid": _dead_pid(), "host": "another-machine"})


def _claim(args):
    root, n = args
    won = []
    for i in range(n):
        lock = locks.CellLock(os.path.join(root, "cells", f"c{i}"), root)
        if lock.acquire():
            won.append(i)  # never released: each cell is claimed once for good
    return won


def test_concurrent_claims_each_cell_won_exactly_once(tmp_path):
    n = 40
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        results = pool.map(_claim, [(str(tmp_path), n)] * 4)
    won = sorted(i for result in results for i in result)
    assert won == list(range(n))


def _leftovers(cell):
    """What a SIGKILLed holder leaves: a half-written checkpoint and status, plus the submitting
    runner's launch record being written (not the holder's)."""
    (cell / "checkpoints").mkdir(parents=True)
    torn = [cell / "checkpoints" / ".step-4.pt.k2j3h4g5.tmp", cell / ".status.json.a1b2c3d4.tmp"]
    launch = cell / f".{LAUNCH_FILE}.z9y8x7w6.tmp"
    for path in (*torn, launch):
        path.write_bytes(b"half")
    (cell / "checkpoints" / "step-2.pt").write_bytes(b"complete")
    return torn, launch


def test_the_new_holder_removes_a_killed_holders_temporaries(tmp_path):
    cell = tmp_path / "cells" / "a"
    torn, launch = _leftovers(cell)
    (cell / "lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    lock = locks.CellLock(cell, tmp_path)
    assert lock.acquire() and lock.reclaimed_from
    assert sorted(lock.removed_temporaries) == sorted(torn)
    assert not any(p.exists() for p in torn)
    assert launch.exists() and (cell / "checkpoints" / "step-2.pt").read_bytes() == b"complete"
    lock.release()


def test_a_runner_that_does_not_get_the_lock_removes_nothing(tmp_path):
    cell = tmp_path / "cells" / "a"
    torn, _ = _leftovers(cell)
    holder = locks.CellLock(cell, tmp_path)
    assert holder.acquire()  # removes them: it holds the lock now
    for path in torn:  # the live holder is writing these again
        path.write_bytes(b"half")
    other = locks.CellLock(cell, tmp_path)
    assert not other.acquire() and other.removed_temporaries == []
    assert all(p.exists() for p in torn)
    holder.release()


def test_temporary_names_are_parsed_exactly():
    assert atomic.temporary_target(".step-4.pt.k2j3h4g5.tmp") == "step-4.pt"
    assert atomic.temporary_target(".summary.csv.q1.tmp") == "summary.csv"
    for name in ("step-4.pt", "x.tmp", ".x.tmp", "..abc.tmp", ".a.b.c"):
        assert atomic.temporary_target(name) is None, name


def test_shared_file_rebuild_removes_only_its_own_temporaries(tmp_path):
    own = [tmp_path / f".{name}.abcd1234.tmp" for name in sorted(SHARED_FILES)]
    report = tmp_path / ".report.pdf.abcd1234.tmp"  # the report writes outside the guard
    for path in (*own, report):
        path.write_bytes(b"half")
    rebuild_shared_files(tmp_path, [], "raw")
    assert not any(p.exists() for p in own) and report.exists()
    assert (tmp_path / "summary.csv").exists()
