"""`.npy` files: open memory-mapped with shape checks, and stream-write a large one atomically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from harness import atomic
from harness.errors import UserError


def open_npy(file: Path, image_hw: tuple[int, int] | None, *, how_to_fix: str) -> np.ndarray:
    """Memory-map a uint8 `(N, H, W, 3)` `.npy`; UserError naming the file when it is not one.

    `image_hw` None accepts any H, W. A truncated file fails here (the map would be larger than
    the file), not at the first batch.
    """
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{file}: not a readable .npy file or truncated ({error}); "
                        f"{how_to_fix}") from None
    expected = f"(N, {image_hw[0]}, {image_hw[1]}, 3)" if image_hw else "(N, H, W, 3)"
    if (not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4
            or array.shape[3] != 3 or (image_hw and array.shape[1:3] != tuple(image_hw))):
        raise UserError(f"{file}: holds {getattr(array, 'dtype', '?')} "
                        f"{getattr(array, 'shape', '?')}, expected uint8 {expected}; "
                        f"{how_to_fix}")
    return array


def npy_rows(file: Path) -> int | None:
    """N from a `.npy` header without mapping the data (None when unreadable)."""
    try:
        with open(file, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, _, _ = read_header(handle)
        return int(shape[0]) if shape else None
    except (ValueError, OSError, EOFError):
        return None


def write_npy_stream(file: Path, shape: tuple[int, ...], chunks: Iterable[np.ndarray]) -> None:
    """Write a uint8 array of `shape` from row chunks without holding it in memory.

    Goes through `harness.atomic`: the file appears only once complete.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
              "fortran_order": False, "shape": tuple(shape)}
    written = 0
    with atomic.atomic_open(file) as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
            assert chunk.shape[1:] == tuple(shape[1:]), (chunk.shape, shape)
            handle.write(chunk.tobytes())
            written += len(chunk)
        assert written == shape[0], (written, shape)
