"""Per-cell locks (harness.run.locks): exclusive claims, stale locks of dead holders reclaimed."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys

from harness.run import locks


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
