"""Crash-safe file writes: write a temporary sibling, fsync, rename over the target.

A reader (or a resumed run) therefore sees either the old complete file or the new complete
file, never a partial one, even after SIGKILL or power loss.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from harness.errors import UserError


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; give results the mode an ordinary open() would (0666 & ~umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for binary writing; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if (isinstance(error, OSError) and error.errno is not None and error.strerror
                and error.filename in (None, tmp_name)):
            # A full disk fails in write() or fsync() with no file name: name the target, not
            # the temporary, so the message says which file could not be written.
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    _fsync_dir(path.parent)


TEMPORARY_SUFFIX = ".tmp"


def temporary_target(name: str) -> str | None:
    """The file name an `atomic_open` temporary (`.{target}.{random}.tmp`) was being written
    for, or None when `name` is not one."""
    if not (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)):
        return None
    target, _, random_part = name[1:-len(TEMPORARY_SUFFIX)].rpartition(".")
    return target if target and random_part else None


def remove_temporaries(directory: str | os.PathLike, recursive: bool = False,
                       targets: frozenset[str] | None = None,
                       keep: frozenset[str] = frozenset()) -> list[Path]:
    """Delete the temporaries that writers killed mid-write (SIGKILL, power loss) left in
    `directory` (and below it, `recursive`); returns what was removed. Only call this when no
    live process can be writing them: the caller holds the lock of whatever writes there.
    `targets`: only temporaries of these file names; `keep`: never those of these names."""
    directory = Path(directory)
    candidates = directory.rglob(f".*{TEMPORARY_SUFFIX}") if recursive else \
        directory.glob(f".*{TEMPORARY_SUFFIX}")
    removed = []
    for path in candidates:
        target = temporary_target(path.name)
        if target is None or target in keep or (targets is not None and target not in targets):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()
            removed.append(path)
    return removed


def check_output_folder(path: str | os.PathLike, option: str,
                        remedy: str = "pass a folder (a missing one is created)") -> Path:
    """`path` as a folder to write into (it need not exist yet): a file at it or at any of its
    parents is a `UserError` naming `option` (e.g. `--results`), before anything is written."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        if folder.exists() or folder.is_symlink():
            what = "is a file" if folder == path else f"{folder} is a file"
            raise UserError(f"{option} {path}: {what}, not a folder; {remedy}")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON row and flush it to disk.

    A single `write` of one line under O_APPEND is atomic with respect to other appenders on
    local filesystems; a torn last line after a crash is skipped by `read_jsonl`. A short write
    (a full disk takes what fits, then fails) is finished or undone: on an error part-way the
    file is cut back to where the line began, so a torn line can never sit in front of the next
    row, and the error names the file; a line torn by a crash is ended before the new row.
    """
    data = (json.dumps(row, sort_keys=True, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a crash tore the last line: leave it alone on its line
        written = os.write(fd, data)
        if written < len(data):
            start = os.fstat(fd).st_size - written  # where this line began
            try:
                while written < len(data):
                    count = os.write(fd, data[written:])
                    if count <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    written += count
            except OSError as error:
                with contextlib.suppress(OSError):
                    if os.fstat(fd).st_size == start + written:  # nobody appended after us
                        os.ftruncate(fd, start)
                raise OSError(error.errno, error.strerror, os.fspath(path)) from error
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete rows of a JSONL file. A torn line (a crash mid-append) is skipped: at the
    end, or alone on its line once a resumed run has appended after it (`append_jsonl`). Any
    other line that is not JSON (an edit gone wrong) raises ValueError naming the file and line.
    """
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                break
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as error:
                if not _torn(line):
                    raise ValueError(f"{os.fspath(path)} has a corrupt row at line {number} "
                                     f"({error})") from error
    return rows


def _torn(line: str) -> bool:
    """Whether `line` is the start of a JSON object cut short: our rows are objects, and a
    strict prefix of one still has a bracket open at its end (outside strings)."""
    if not line.startswith("{"):
        return False
    depth, in_string, escaped = 0, False, False
    for char in line:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return False  # the object closed: what fails to parse is not a cut
    return True


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object file's contents; {} when it is missing, unreadable, not JSON or not an
    object (the status and record files of a results folder, read without trusting them)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
