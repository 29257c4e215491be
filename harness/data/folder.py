"""Folders of PNG/JPEG images: the `image_folder` dataset and the listing helper the PNG
versions of ImageNet and FFHQ share.

`image_folder` takes any folder (searched recursively, files in sorted relative-path order):
`perm = RandomState(split_seed).permutation(n)`; test = the last `test_size`, validation = the
`validation_size` before them, train = the rest in permuted order (defaults: a tenth each).
`test_size` may be every image (validation_size 0): an empty train split, for evaluating
checkpoints. Every image is converted to one mode ("L" when all files are greyscale, else "RGB",
or the `mode` option) and must have one size, unless `image_size` is given, in which case each is
resized.
Images are decoded lazily, batch by batch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from harness.data.lazy import FileSource, LazyImages
from harness.data.paths import primary_root
from harness.data.registry import (DatasetStatus, check_choice, check_int, make_splits,
                                   register_dataset)
from harness.data.splits import check_sizes, seeded_permutation
from harness.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
NAME = "image_folder"
# Written as the dotted key (harness evaluate names it --set path=DIR instead).
HOW_TO_GET = "pass data.options.path=DIR, a folder of PNG/JPEG images"


def list_images(folder: Path, *, recursive: bool) -> list[Path]:
    """PNG/JPEG files under `folder`, sorted by relative path (a stable, documented order)."""
    if recursive:
        found = []
        for directory, subdirs, names in os.walk(folder):
            subdirs.sort()
            found += [Path(directory) / n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    else:
        found = [Path(e.path) for e in os.scandir(folder)
                 if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found, key=lambda f: f.relative_to(folder).as_posix())


def count_images(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES))


def scan_headers(files: list[Path]) -> list[tuple[tuple[int, int], str]]:
    """((width, height), mode) of every file from its header, without decoding pixels."""
    from PIL import Image, UnidentifiedImageError

    headers = []
    for file in files:
        try:
            with Image.open(file) as image:
                headers.append((image.size, image.mode))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise UserError(f"{file}: not a readable image ({error}); remove or replace "
                            "it") from None
    return headers


def content_digest(files: list[Path], root: Path) -> str:
    """sha256 over every file's relative name and content sha256, in listing order."""
    total = hashlib.sha256()
    for file in files:
        content = hashlib.sha256(file.read_bytes()).hexdigest()
        total.update(f"{file.relative_to(root).as_posix()}\t{content}\n".encode())
    return total.hexdigest()


def _image_size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    sizes = [value, value] if isinstance(value, int) else value
    if (not isinstance(sizes, (list, tuple)) or len(sizes) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)):
        raise UserError(f"dataset '{NAME}': option image_size={value!r} must be a positive int "
                        "or [height, width]")
    return int(sizes[0]), int(sizes[1])


@register_dataset(NAME, status=lambda data_dir: DatasetStatus(
                      NAME, None, HOW_TO_GET, None, "-", False, note="custom images"),
                  description="any folder of PNG/JPEG images")
def load_image_folder(data_dir: Path | None, *, path: str | Path | None = None,
                      validation_size: int | None = None, test_size: int | None = None,
                      split_seed: int = 0, image_size: int | list[int] | None = None,
                      mode: str | None = None):
    if path is None:
        raise UserError(f"dataset '{NAME}' has no folder to read: {HOW_TO_GET}")
    folder = Path(path).expanduser()
    if not folder.is_absolute() and not folder.exists():
        folder = primary_root(data_dir) / folder  # relative to the harness data directory
    if not folder.is_dir():
        raise UserError(f"dataset '{NAME}': {folder} is not a folder; {HOW_TO_GET}")
    check_int(NAME, "split_seed", split_seed)
    check_choice(NAME, "mode", mode, (None, "L", "RGB"))
    size_hw = _image_size(image_size)
    files = list_images(folder, recursive=True)
    if not files:
        raise UserError(f"dataset '{NAME}': no .png/.jpg/.jpeg files under {folder}")
    headers = scan_headers(files)
    if size_hw is None:
        (width, height), _ = headers[0]
        for file, ((w, h), _) in zip(files, headers):
            if (w, h) != (width, height):
                raise UserError(f"{file}: image is {w}x{h} (WxH) but {files[0].name} is "
                                f"{width}x{height}; make all images one size or pass the "
                                "image_size option to resize them")
        size_hw = (height, width)
    if mode is None:
        mode = "L" if all(m in GREY_MODES for _, m in headers) else "RGB"

    n = len(files)
    validation_size = n // 10 if validation_size is None else validation_size
    test_size = n // 10 if test_size is None else test_size
    check_sizes(n, validation_size, test_size, what=f"dataset '{NAME}' ({folder})",
                allow_empty_train=True)  # test_size = n: a folder to evaluate on only
    perm = seeded_permutation(n, split_seed)
    n_train = n - validation_size - test_size
    source = FileSource(files, mode, size_hw, resize=image_size is not None)
    return make_splits(
        NAME,
        train=LazyImages(source, perm[:n_train]),
        validation=LazyImages(source, perm[n_train:n_train + validation_size]),
        test=LazyImages(source, perm[n_train + validation_size:]),
        version=f"custom folder {folder.name}",
        comparable=False,
        files={f"{folder.name}/ ({n} files)": content_digest(files, folder)},
        checksums_verified=False,
        checksum_note="sha256 over each file's relative name and content sha256; no reference",
        split_seed=split_seed,
        source=folder.resolve(),
        split_rule="perm = RandomState(split_seed).permutation(n) over sorted relative paths; "
                   "test = perm[-test_size:], validation = the validation_size before, "
                   "train = the rest",
        mode=mode,
        resized=image_size is not None,
    )
