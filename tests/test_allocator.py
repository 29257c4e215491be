"""harness.engine.allocator: the setting takes on glibc, once, and every cell runs under it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.engine import allocator

# A fresh process: a step's worth of big blocks (three of 24 MiB) freed and allocated again come
# back from the heap on pages already mapped under the setting; by default glibc hands the freed
# top of the heap back to the kernel (more than twice its adaptive mmap threshold), so every cycle
# faults its pages in again.
_PROBE = """
import ctypes, resource, sys
from harness.engine import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == "1" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 24 * 2 ** 20
def cycle():
    blocks = [libc.malloc(size) for _ in range(3)]
    for block in blocks:
        ctypes.memset(block, 1, size)  # touch every page
    for block in blocks:
        libc.free(block)
cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(apply: bool) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", _PROBE, "1" if apply else "0"],
                          capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    pages = 3 * 24 * 2 ** 20 // 4096  # per cycle
    applied, kept = _faults(True)
    _, default = _faults(False)
    if applied != "True":
        pytest.skip("not glibc: the allocator is left as it is")
    assert kept < pages // 10, kept  # five cycles on pages already mapped
    assert default >= 5 * pages // 2, default  # glibc's default maps them afresh each time


def test_second_call_does_nothing():
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first
    assert allocator.keep_freed_memory.cache_info().hits >= 1


def test_every_cell_and_the_probe_run_under_it(monkeypatch, tmp_path):
    """run_cell and the planner's probe call it (so the cells and the estimate see the same
    allocator): checked by replacing it, running the probe's entry on no tasks, and stopping
    run_cell at its first write after the call."""
    from harness.run import cell, probe

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert probe._probe_all([], 1) == []
    assert calls == [1]

    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop

    monkeypatch.setattr(cell, "cell_config_record", stop)
    with pytest.raises(Stop):
        cell.run_cell(None, None, tmp_path / "cell")
    assert calls == [1, 1]
