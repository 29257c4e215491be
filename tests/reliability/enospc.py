"""ENOSPC injection at the write path (no root needed): the first atomic write whose target name
matches a pattern writes half its bytes, then fails with "No space left on device" — what a full
disk does to a `write`. A tmpfs variant (root only) fills a real filesystem."""

from __future__ import annotations

import errno
import fnmatch
import os
from pathlib import Path

from harness import atomic


class DiskFull:
    def __init__(self, monkeypatch, pattern: str, after: int = 0):
        self.pattern, self.after, self.hits, self.failed = pattern, after, 0, []
        real_fdopen = os.fdopen
        injector = self

        def fdopen(fd, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return handle
            target = Path(name).name.lstrip(".").rsplit(".", 2)[0]  # .x.pt.abc123.tmp → x.pt
            if not fnmatch.fnmatch(target, injector.pattern):
                return handle
            injector.hits += 1
            if injector.hits <= injector.after:
                return handle
            return _Full(handle, injector, name)

        monkeypatch.setattr(atomic.os, "fdopen", fdopen)


class _Full:
    def __init__(self, handle, injector, name):
        self._handle, self._injector, self._name = handle, injector, name

    def write(self, data):
        self._handle.write(bytes(data)[: len(data) // 2])
        self._injector.failed.append(self._name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
