"""Read-only image sets that read or decode only the images a batch asks for.

Large sets (ImageNet-32/64, FFHQ) stay on disk: an `ArraySource` wraps a memory-mapped `.npy`
(`np.load(mmap_mode="r")`), a `FileSource` decodes PNG/JPEG files on demand. `LazyImages`
applies a split's index array on top, so `train`/`validation` are views of one file in the
reference's permuted order and nothing is copied until a batch is indexed.

Consumers index batches: `images[idx]` with an int, slice, list, numpy array or tensor of indices
returns a uint8 tensor `(B, C, H, W)` (an int gives `(C, H, W)`), exactly like indexing an
in-memory uint8 tensor. `len`, `.shape`, `.dtype`, `.ndim` and `.size()` match a tensor too.
Float conversion happens per batch, in the model's input code, never for the whole set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.errors import UserError


class ArraySource:
    """A uint8 array `(N, H, W, C)` ("NHWC") or `(N, C, H, W)` ("NCHW"), usually a memmap."""

    def __init__(self, array: np.ndarray, layout: str, path: Path | None = None):
        assert layout in ("NHWC", "NCHW"), layout
        assert array.dtype == np.uint8 and array.ndim == 4, (array.dtype, array.shape)
        self.layout = layout
        self.path = path
        self._array = array
        n, a, b, c = array.shape
        self.shape = (n, c, a, b) if layout == "NHWC" else (n, a, b, c)  # (N, C, H, W)

    def read(self, rows: np.ndarray) -> np.ndarray:
        batch = np.asarray(self._array[rows])  # copies only these rows off the memmap
        if self.layout == "NHWC":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch)  # (B, C, H, W)

    # A memmap pickles as a full in-memory copy; for spawned DataLoader workers re-open the file.
    def __getstate__(self):
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")


class FileSource:
    """Image files decoded with Pillow on access, converted to `mode` ("L" or "RGB").

    `size` is (H, W). With `resize` False an image of another size is a UserError naming the
    file; with it True the image is resized (Pillow BOX filter when shrinking, the
    area-averaging "box downsampling" of the ImageNet-32/64 npz version, bicubic otherwise).
    """

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int], resize: bool = False):
        assert mode in ("L", "RGB"), mode
        self.files = list(files)
        self.mode = mode
        self.size = size
        self.resize = resize
        self.shape = (len(self.files), 1 if mode == "L" else 3, size[0], size[1])

    def decode(self, index: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        file = self.files[index]
        height, width = self.size
        try:
            with Image.open(file) as image:
                image = image.convert(self.mode)
                if image.size != (width, height):
                    if not self.resize:
                        raise UserError(
                            f"{file}: image is {image.size[0]}x{image.size[1]} (WxH), expected "
                            f"{width}x{height}; remove it or pass the image_size option to resize")
                    shrink = image.size[0] >= width and image.size[1] >= height
                    image = image.resize(
                        (width, height),
                        Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
                pixels = np.asarray(image, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise UserError(f"{file}: cannot decode image ({error}); remove or replace "
                            "it") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return pixels.transpose(2, 0, 1)  # (C, H, W)

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows),) + self.shape[1:], dtype=np.uint8)  # (B, C, H, W)
        for slot, row in enumerate(rows):
            out[slot] = self.decode(int(row))
        return out


class LazyImages:
    """`source` rows in the order of `indices`: a lazy, read-only uint8 `(N, C, H, W)` set."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, source: ArraySource | FileSource, indices: np.ndarray | None = None):
        self.source = source
        n = source.shape[0]
        self.indices = (np.arange(n, dtype=np.int64) if indices is None
                        else np.asarray(indices, dtype=np.int64))
        assert self.indices.ndim == 1
        assert len(self.indices) == 0 or (0 <= self.indices.min() and self.indices.max() < n)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.indices),) + tuple(self.source.shape[1:]))

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        if isinstance(key, tuple):
            raise TypeError("LazyImages takes one index (int, slice or index array); "
                        "index the returned batch tensor for pixels or channels")
        rows = self.indices[key]  # IndexError for an out-of-range int, like a tensor
        if np.ndim(rows) == 0:
            return torch.from_numpy(self.source.read(np.asarray([rows]))[0])  # (C, H, W)
        return torch.from_numpy(self.source.read(rows))  # (B, C, H, W)

    def subset(self, indices) -> LazyImages:
        """A lazy view of some of these images (indices into this set)."""
        return LazyImages(self.source, self.indices[np.asarray(indices, dtype=np.int64)])

    def materialize(self) -> torch.Tensor:
        """The whole set as one in-memory uint8 tensor `(N, C, H, W)`; only for small sets."""
        return self[:]

    def __repr__(self) -> str:
        return (f"LazyImages(shape={tuple(self.shape)}, dtype=torch.uint8, "
                f"source={type(self.source).__name__})")
