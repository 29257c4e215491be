"""File checksums for provenance, cached by (path, size, mtime) so that listing datasets is fast.

Digest kinds: `sha256` and `md5` of the bytes on disk, and `sha256-gunzip` of a gzip file's
decompressed content (Debian re-gzips Fashion-MNIST, so only the decompressed bytes have a
stable checksum). The cache is one JSON file in the harness data directory, rewritten
atomically; a stale entry (the file's size or mtime changed) is ignored. Losing a cache update to
a concurrent writer only costs recomputing it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path

from harness import atomic
from harness.errors import UserError

CACHE_NAME = "checksums.json"
_CHUNK = 1 << 20
KINDS = ("sha256", "md5", "sha256-gunzip")


class DigestCache:
    """`{absolute path: {"size", "mtime_ns", kind: hexdigest}}` kept in `<root>/checksums.json`."""

    def __init__(self, root: Path | None):
        self.path = root / CACHE_NAME if root is not None else None
        self._entries: dict[str, dict] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self._entries = loaded

    @staticmethod
    def _stamp(file: Path) -> tuple[str, int, int]:
        stat = file.stat()
        return str(file.resolve()), stat.st_size, stat.st_mtime_ns

    def get(self, file: Path, kind: str) -> str | None:
        key, size, mtime_ns = self._stamp(file)
        entry = self._entries.get(key)
        if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime_ns:
            return entry.get(kind)
        return None

    def put(self, file: Path, kind: str, digest: str) -> None:
        key, size, mtime_ns = self._stamp(file)
        entry = self._entries.get(key)
        if not entry or entry.get("size") != size or entry.get("mtime_ns") != mtime_ns:
            entry = {"size": size, "mtime_ns": mtime_ns}
            self._entries[key] = entry
        if entry.get(kind) != digest:
            entry[kind] = digest
            self._dirty = True

    def save(self) -> None:
        """Write the cache if anything changed; a read-only data directory just skips caching."""
        if not self._dirty or self.path is None:
            return
        with contextlib.suppress(OSError):
            atomic.write_json(self.path, self._entries)
            self._dirty = False


def digest_file(file: Path, kinds: tuple[str, ...], cache: DigestCache | None = None
                ) -> dict[str, str]:
    """`{kind: hexdigest}` for `file`, reading it at most twice (raw, then decompressed)."""
    assert all(kind in KINDS for kind in kinds), kinds
    result = {kind: cache.get(file, kind) for kind in kinds} if cache else dict.fromkeys(kinds)
    raw_kinds = [k for k in ("sha256", "md5") if k in kinds and result[k] is None]
    if raw_kinds:
        hashers = {kind: hashlib.new(kind) for kind in raw_kinds}
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                for hasher in hashers.values():
                    hasher.update(block)
        result.update({kind: hasher.hexdigest() for kind, hasher in hashers.items()})
    if "sha256-gunzip" in kinds and result["sha256-gunzip"] is None:
        hasher = hashlib.sha256()
        with open_gzip(file) as handle:
            for block in read_chunks(handle, file):
                hasher.update(block)
        result["sha256-gunzip"] = hasher.hexdigest()
    if cache is not None:
        for kind, digest in result.items():
            cache.put(file, kind, digest)
    return result  # type: ignore[return-value]


def cached_state(files, cache: DigestCache) -> str:
    """Checksum state for the table when no reference exists: hashing multi-GB files is left to
    the first load, whose result is cached."""
    if all(cache.get(f, "sha256") for f in files):
        return "recorded (no reference)"
    return "hashed on first load"


def open_gzip(file: Path):
    return gzip.open(file, "rb")


def read_chunks(handle, file: Path):
    """Chunks of a (possibly gzip) stream; a truncated or corrupt gzip becomes a UserError."""
    try:
        while True:
            block = handle.read(_CHUNK)
            if not block:
                return
            yield block
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as error:
        raise UserError(f"{file}: truncated or corrupt gzip file ({error}); delete it and "
                        "download or copy it again") from None


def read_maybe_gzip(file: Path) -> bytes:
    """The whole content of `file`, decompressed when its name ends in `.gz`."""
    if file.suffix != ".gz":
        return file.read_bytes()
    with open_gzip(file) as handle:
        return b"".join(read_chunks(handle, file))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing_digest(files: list[Path], root: Path) -> str:
    """sha256 of the sorted (relative name, size) list: a cheap fingerprint of a large folder.

    Used for image folders, whose contents would take minutes to hash; it changes when a file is
    added, removed, renamed or resized, not when bytes change in place.
    """
    hasher = hashlib.sha256()
    for file in files:
        hasher.update(f"{file.relative_to(root).as_posix()}\t{os.path.getsize(file)}\n".encode())
    return hasher.hexdigest()
