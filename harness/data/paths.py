"""Where datasets are looked for, in order.

1. `data_dir` when given (the CLI's `--data-dir`), else `$HARNESS_DATA`, else `~/.cache/harness`;
2. `./data` (relative to the working directory at call time);
3. dataset-specific system directories, e.g. `/usr/share/datasets/fashion-mnist` from the
   Debian package `dataset-fashion-mnist`.

Each root holds one sub-directory per dataset (`<root>/fashion_mnist/`, `<root>/cifar10/`, ...).
Downloads and caches go to the first root.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.atomic import check_output_folder

# Directories that hold a dataset's files directly, outside any harness root. Tests replace
# this dict to isolate themselves from what happens to be installed on the machine.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


def primary_root(data_dir: Path | str | None = None) -> Path:
    """The harness data directory: `data_dir`, else `$HARNESS_DATA`, else `~/.cache/harness`;
    a file there (or on its way) is a `UserError`: downloads and caches go into it."""
    env = os.environ.get("HARNESS_DATA")
    if data_dir is not None:
        root, given = Path(data_dir).expanduser(), "data directory (--data-dir, data.data_dir)"
    elif env:
        root, given = Path(env).expanduser(), "data directory ($HARNESS_DATA)"
    else:
        root, given = Path.home() / ".cache" / "harness", "data directory"
    return check_output_folder(root, given, "pass a folder (a missing one is created on the "
                               "first download)")


def data_dirs(dataset: str | None = None, data_dir: Path | str | None = None,
              subdirs: tuple[str, ...] | None = None) -> list[Path]:
    """Directories searched, in order.

    Without `dataset`: the roots (`$HARNESS_DATA` or `data_dir`, then `./data`). With it: the
    per-dataset directories under each root (`<root>/<dataset>` or the given `subdirs`; an empty
    subdir means the root itself), then that dataset's system directories.
    """
    roots = [primary_root(data_dir), Path("data").resolve()]
    unique_roots: list[Path] = []
    for root in roots:
        if root not in unique_roots:
            unique_roots.append(root)
    if dataset is None:
        return unique_roots
    names = subdirs if subdirs is not None else (dataset,)
    dirs = [root / name if name else root for root in unique_roots for name in names]
    dirs += list(SYSTEM_DIRS.get(dataset, ()))
    return dirs


def download_dir(dataset: str, data_dir: Path | str | None = None) -> Path:
    """Where missing files of `dataset` are downloaded to: `<primary root>/<dataset>`."""
    return primary_root(data_dir) / dataset


def hint(text: str, data_dir: Path | str | None = None) -> str:
    """`text` with `{root}` replaced by the harness data directory actually in use."""
    return text.replace("{root}", str(primary_root(data_dir)))


def describe_dirs(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs)
