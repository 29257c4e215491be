"""Download missing dataset files: stream to a temporary sibling, verify, then rename.

A file appears under its final name only after its checksum matched, so an interrupted or
corrupt download never looks complete. The base URL of each dataset can be overridden by the
loader's `download_url` option or `$HARNESS_<DATASET>_URL` (tests point it at a local server);
`HARNESS_DOWNLOAD=0` turns downloading off everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import atomic
from harness.errors import UserError

TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file on a dataset server and what its bytes must hash to."""

    name: str
    md5: str | None = None  # of the bytes as served (the canonical archives publish md5)
    sha256_gunzip: str | None = None  # of the decompressed content of a .gz file


class _ChecksumMismatch(Exception):
    pass


_SUSPENDED = [0]  # depth of `no_downloads()` blocks in this process


def downloads_enabled() -> bool:
    if _SUSPENDED[0]:
        return False
    return os.environ.get("HARNESS_DOWNLOAD", "1").strip().lower() not in ("0", "false", "no")


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Inside: loaders use only the files already here (`harness run --dry-run` plans from what
    is on disk and never starts a download)."""
    _SUSPENDED[0] += 1
    try:
        yield
    finally:
        _SUSPENDED[0] -= 1


def base_url(dataset: str, option: str | None, default: str) -> str:
    """`download_url` option, else `$HARNESS_<DATASET>_URL`, else the canonical source."""
    url = option or os.environ.get(f"HARNESS_{dataset.upper()}_URL") or default
    return url if url.endswith("/") else url + "/"


class _GunzipHasher:
    """sha256 of a gzip stream's decompressed bytes, fed compressed chunks (multi-member safe)."""

    def __init__(self):
        self.sha256 = hashlib.sha256()
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def update(self, chunk: bytes) -> None:
        while chunk:
            self.sha256.update(self._inflate.decompress(chunk))
            chunk = self._inflate.unused_data
            if self._inflate.eof:
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                assert not chunk

    def hexdigest(self) -> str:
        # A truncated stream simply hashes fewer bytes, so it cannot match the expected digest.
        return self.sha256.hexdigest()


def download_file(url_base: str, remote: RemoteFile, target_dir: Path, *, how_to_get: str,
                  timeout_s: float = TIMEOUT_S) -> Path:
    """Fetch `url_base + remote.name` into `target_dir`; UserError (and no file) on any failure."""
    url = url_base + remote.name
    target = target_dir / remote.name
    md5 = hashlib.md5()
    gunzip = _GunzipHasher() if remote.sha256_gunzip else None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, \
                atomic.atomic_open(target) as handle:
            received = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                handle.write(chunk)
                received += len(chunk)
                md5.update(chunk)
                if gunzip is not None:
                    gunzip.update(chunk)
            promised = response.headers.get("Content-Length")
            if promised is not None and promised.isdigit() and int(promised) != received:
                # read(n) returns b"" at a dropped connection instead of raising.
                raise ConnectionError(f"connection closed after {received:,} of "
                                      f"{int(promised):,} bytes")
            if remote.md5 and md5.hexdigest() != remote.md5:
                raise _ChecksumMismatch(f"md5 {md5.hexdigest()}, expected {remote.md5}")
            if gunzip is not None and gunzip.hexdigest() != remote.sha256_gunzip:
                raise _ChecksumMismatch(f"decompressed sha256 {gunzip.hexdigest()}, "
                                        f"expected {remote.sha256_gunzip}")
    except _ChecksumMismatch as error:
        raise UserError(f"downloaded {url} does not match its checksum ({error}); nothing was "
                        f"saved. Retry later, or {how_to_get}") from None
    except zlib.error as error:
        raise UserError(f"downloaded {url} is not a valid gzip file ({error}); nothing was "
                        f"saved. Retry later, or {how_to_get}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        reason = getattr(error, "reason", None) or str(error) or repr(error)
        raise UserError(f"could not download {url} ({reason}); {how_to_get}") from None
    return target
