"""`harness datasets`: every registered dataset, where it was found (or how to get it), its
split sizes and checksum state, without decoding any images (headers and cached checksums)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from harness.data.paths import data_dirs, primary_root
from harness.data.registry import DATASETS, DatasetStatus, dataset_names
from harness.errors import UserError

COLUMNS = ("dataset", "status", "train / validation / test", "checksums", "comparable",
           "location, or how to get it")


def _sizes(status: DatasetStatus) -> str:
    if not status.split_sizes:
        return "-"
    s = status.split_sizes
    return f"{s['train']:,} / {s['validation']:,} / {s['test']:,}"


def dataset_rows(data_dir: Path | None = None) -> list[tuple[str, ...]]:
    """One row of strings per dataset, in name order."""
    rows = []
    for name in dataset_names():
        try:
            status = DATASETS[name].status(data_dir)
        except (UserError, OSError) as error:
            status = DatasetStatus(name, None, "", None, f"ERROR: {error}", False)
        where = str(status.found) if status.found else status.how_to_get
        if status.note:
            where += f" ({status.note})"
        comparable = ("NO" if not status.comparable_to_published
                      else "yes" if status.found else "-")
        rows.append((name, "found" if status.found else "missing", _sizes(status),
                     status.checksums, comparable, where))
    return rows


def print_dataset_table(data_dir: Path | None = None, file: TextIO | None = None) -> None:
    """Print the dataset table (the `harness datasets` subcommand)."""
    file = file or sys.stdout
    primary_root(data_dir)  # a file given as the data directory: one line, before the table
    rows = dataset_rows(data_dir)
    widths = [max(len(row[i]) for row in rows + [COLUMNS]) for i in range(len(COLUMNS) - 1)]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]

    print(line(COLUMNS), file=file)
    print(line(tuple("-" * w for w in widths) + ("-" * len(COLUMNS[-1]),)), file=file)
    for row in rows:
        print(line(row), file=file)
    print(f"\nsearched: {', '.join(str(d) for d in data_dirs(data_dir=data_dir))} "
          "(then per-dataset system folders); set $HARNESS_DATA or --data-dir to change",
          file=file)
