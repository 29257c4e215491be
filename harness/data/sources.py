"""Image sets named by one string, for commands that read images from anywhere.

`load_images(spec)` accepts three kinds of source, tried in this order:

* a `.npy` file holding uint8 `(N, C, H, W)` images (C = 1 or 3), such as a results cell's
  saved samples (`cells/<cell>/samples.npy`); read with `allow_pickle=False`;
* a folder of PNG/JPEG images, searched recursively in sorted relative-path order (the
  `image_folder` dataset's order); all must have one size; they are read as mode "L" when every
  file is greyscale, else as "RGB";
* `DATASET:SPLIT[:N]`, a registered dataset's split (`fashion_mnist:test:2000` = the first 2,000
  test images, in the split's own order). N must be 1 to the split's size: a larger N is refused,
  never capped, so a figure's n is always the n asked for.

Names: a folder's images are named by their relative paths; a split's and an array's by their
zero-padded index (`000123`), so names sort in input order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.folder import GREY_MODES, IMAGE_SUFFIXES, list_images, scan_headers
from harness.data.lazy import FileSource, LazyImages
from harness.data.registry import DATASETS, dataset_names, load_dataset
from harness.errors import UserError, unknown_name_error

SPLITS = ("train", "validation", "test")
SPEC_FORMS = ("a folder of PNG images, a .npy file of uint8 (N, C, H, W) images, or "
              "DATASET:SPLIT[:N]")
# A dataset spec is plain words: no path separator, no file suffix.
_DATASET_SPEC = re.compile(r"^[A-Za-z0-9_\-]+:[^:/\\]*(:[^:/\\]*)?$")


@dataclass(frozen=True, eq=False)
class ImageSet:
    """uint8 `images` (N, C, H, W), one name per image, and a one-line description."""

    images: np.ndarray
    names: list[str]
    description: str

    def __post_init__(self):
        assert self.images.dtype == np.uint8 and self.images.ndim == 4, self.images.shape
        assert self.images.shape[1] in (1, 3), self.images.shape
        assert len(self.names) == len(self.images) > 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # (C, H, W)


def index_names(n: int) -> list[str]:
    """`000000`, `000001`, ...: zero-padded to at least six digits, so they sort numerically."""
    width = max(6, len(str(n - 1)))
    return [f"{i:0{width}d}" for i in range(n)]


def load_images(spec: str, data_dir: Path | str | None = None) -> ImageSet:
    """The images `spec` names (see the module docstring); a UserError for anything wrong."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec.lower().endswith(".npy"):
        return _load_npy(path)
    if path.is_dir():
        return _load_folder(path)
    if path.exists():
        raise UserError(f"{path}: not a folder or a .npy file; give {SPEC_FORMS}")
    if _DATASET_SPEC.match(spec):
        return _load_split(spec, data_dir)
    hint = ""
    if spec in DATASETS:
        hint = f" (for a dataset split write {spec}:test or {spec}:test:N)"
    raise UserError(f"{spec}: no such file or folder{hint}; give {SPEC_FORMS}")


def _load_npy(path: Path) -> ImageSet:
    if not path.is_file():
        raise UserError(f"{path}: no such file; give {SPEC_FORMS}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path}: not a readable .npy array ({error}); save images with "
                        "numpy.save as uint8 (N, C, H, W)") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4:
        raise UserError(f"{path}: holds {getattr(array, 'dtype', '?')} "
                        f"{tuple(getattr(array, 'shape', ()))}, expected uint8 (N, C, H, W) "
                        "images; convert it with numpy (e.g. .astype(np.uint8))")
    if array.shape[1] not in (1, 3):
        layout_hint = (" (it looks channels-last: use array.transpose(0, 3, 1, 2))"
                       if array.shape[3] in (1, 3) else "")
        raise UserError(f"{path}: shape {tuple(array.shape)} has {array.shape[1]} channels at "
                        f"axis 1, expected 1 or 3 in (N, C, H, W){layout_hint}")
    if array.shape[0] == 0:
        raise UserError(f"{path}: holds no images (shape {tuple(array.shape)})")
    images = np.array(array)  # an in-memory, writable copy of the memory map
    return ImageSet(images, index_names(len(images)),
                    f"{path} ({len(images)} images, {_shape_text(images)})")


def _load_folder(folder: Path) -> ImageSet:
    files = list_images(folder, recursive=True)
    if not files:
        raise UserError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder or "
                        "below; give a folder of images")
    headers = scan_headers(files)
    (width, height), _ = headers[0]
    for file, ((w, h), _) in zip(files, headers):
        if (w, h) != (width, height):
            raise UserError(f"{file}: image is {w}x{h} (WxH) but {files[0]} is "
                            f"{width}x{height}; all images in {folder} must have one size")
    mode = "L" if all(m in GREY_MODES for _, m in headers) else "RGB"
    images = LazyImages(FileSource(files, mode, (height, width)))[:].numpy()  # (N, C, H, W)
    names = [f.relative_to(folder).as_posix() for f in files]
    return ImageSet(images, names, f"{folder}/ ({len(images)} images, {_shape_text(images)})")


def _load_split(spec: str, data_dir) -> ImageSet:
    name, split, *rest = spec.split(":")
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, dataset_names())
    if name == "image_folder":
        raise UserError(f"{spec}: give the folder's path itself instead of image_folder:SPLIT")
    if split not in SPLITS:
        raise UserError(f"{spec}: unknown split '{split}' of dataset '{name}'. Valid: "
                        f"{', '.join(SPLITS)}")
    images = getattr(load_dataset(name, data_dir), split)
    total = len(images)
    n = total
    if rest:
        text = rest[0]
        if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
            raise UserError(f"{spec}: N must be a whole number of images from 1 to {total}, "
                            f"got '{text}'")
        n = int(text)
        if n > total:
            raise UserError(f"{spec}: asks for {n} images but {name}:{split} has {total}; "
                            f"ask for at most {total}")
    if total == 0:
        raise UserError(f"{spec}: {name}:{split} holds no images")
    batch = images[0:n]  # uint8 tensor (n, C, H, W)
    array = np.ascontiguousarray(batch.numpy())
    first = "" if n == total else f"first {n} of {total}, "
    return ImageSet(array, index_names(n),
                    f"{name}:{split} ({first}{n} images, {_shape_text(array)})")


def _shape_text(images: np.ndarray) -> str:
    _, c, h, w = images.shape
    return f"{c}x{h}x{w}"
