"""Regression (found by test_concurrency): taking over a dead runner's lock unlinked the file and
then created a new one; in between, another runner's O_EXCL create could win, run the cell and
nobody reported that a dead runner's lock had been taken over. The lock file is now replaced in
one rename, so it never vanishes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from harness.run import locks


def test_reclaiming_a_stale_lock_leaves_no_gap_for_another_creator(tmp_path, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cell = tmp_path / "cells" / "c"
    cell.mkdir(parents=True)
    (cell / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                           "start_ticks": 1}))
    real_unlink, stolen = Path.unlink, []

    def unlink(self, *args, **kwargs):
        real_unlink(self, *args, **kwargs)
        if self.name == locks.LOCK_NAME:  # a second runner's first, unguarded create, now
            stolen.append(locks._create(self))

    monkeypatch.setattr(Path, "unlink", unlink)
    lock = locks.CellLock(cell, tmp_path)
    acquired = lock.acquire()
    monkeypatch.undo()
    assert acquired and lock.reclaimed_from["pid"] == dead.pid
    assert stolen == []  # the file was never missing
    assert not locks._create(cell / locks.LOCK_NAME)  # a second runner cannot create it now
    assert locks.read_lock(cell / locks.LOCK_NAME)["pid"] == locks.holder_record()["pid"]
    assert sorted(p.name for p in cell.iterdir()) == ["lock"]  # no temporary left
    lock.release()
    assert not (cell / "lock").exists()
