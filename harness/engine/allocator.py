"""The process's memory allocator, set for training and evaluation on the CPU.

glibc's malloc serves the large tensors of a step (the PixelCNN's 256-way logits at batch 32 on
28×28 are ~26 MB) from fresh mappings or from heap it has just handed back to the kernel, so the
next step touches new pages and pays a page fault for each 4 KiB of them. `keep_freed_memory`
keeps what a step frees for the next one: allocations up to 32 MiB (glibc's largest mmap
threshold) come from the heap, and the heap is never trimmed. Memory then stays at the process's
peak, which the rows already report as the cell's peak memory. What it gains, and the
allocators tried instead: docs/benchmarks.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit: larger requests are mmapped
NEVER_TRIM_BYTES = 2 ** 31 - 1  # mallopt takes an int


@functools.cache
def keep_freed_memory() -> bool:
    """Keep freed memory in the process (once per process; later calls do nothing). True where
    glibc took the settings; False on another C library, which is left as it is."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM_BYTES))
