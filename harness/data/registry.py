"""The dataset registry: name -> loader, filled by `@register_dataset`.

A loader is `load(data_dir, *, option=default, ...) -> DatasetSplits`; its keyword-only
parameters are the dataset's options, so an unknown option is caught here and named, with the
closest valid one. A status function, `status(data_dir) -> DatasetStatus`, tells the
`harness datasets` table where the files are and what they hold without decoding them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.data.lazy import LazyImages
from harness.errors import UserError, closest, unknown_name_error

Images = torch.Tensor | LazyImages


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """uint8 `(N, C, H, W)` train / validation / test images of one dataset, plus provenance.

    Small sets are in-memory tensors; large ones are `LazyImages` over memory-mapped files. Both
    support `len`, `.shape` and batch indexing (`images[idx]` -> uint8 `(B, C, H, W)` tensor),
    which is all consumers may rely on. `n_bits` is the bit depth the model should quantise to
    (8, or 5 for FFHQ-256 at 5 bits); the pixels themselves always stay 8-bit.
    `provenance` is JSON-serialisable and goes into every result row.
    """

    name: str
    train: Images
    validation: Images
    test: Images
    image_shape: tuple[int, int, int]  # (C, H, W)
    n_bits: int
    provenance: dict

    def __post_init__(self):
        for split in (self.train, self.validation, self.test):
            assert split.dtype == torch.uint8, split.dtype
            assert tuple(split.shape[1:]) == tuple(self.image_shape), (split.shape,
                                                                        self.image_shape)
        assert self.n_bits in (5, 8), self.n_bits

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation),
                "test": len(self.test)}


@dataclass(frozen=True)
class DatasetStatus:
    """One row of the `harness datasets` table (no image is decoded to build it)."""

    name: str
    found: Path | None  # where the files are, None when missing
    how_to_get: str  # what to do when missing
    split_sizes: dict[str, int] | None  # None when unknown without decoding
    checksums: str  # "verified", "recorded", "MISMATCH: <file>", "not computed", ...
    comparable_to_published: bool
    note: str = ""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Callable[..., DatasetSplits]
    status: Callable[[Path | None], DatasetStatus]
    description: str
    options: dict[str, Any] = field(default_factory=dict)  # option -> default


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, status: Callable[[Path | None], DatasetStatus],
                     description: str):
    """Decorator: register `load(data_dir, *, options...)` under `name`."""

    def decorate(load: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
        assert name not in DATASETS, f"dataset {name!r} registered twice"
        parameters = list(inspect.signature(load).parameters.values())
        assert parameters and parameters[0].name == "data_dir", load
        options = {p.name: p.default for p in parameters[1:]}
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[1:]), load
        DATASETS[name] = DatasetEntry(name, load, status, description, options)
        return load

    return decorate


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def get_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, DATASETS)
    return DATASETS[name]


def load_dataset(name: str, data_dir: Path | None = None, **options) -> DatasetSplits:
    """Load `name`'s train / validation / test splits (each dataset module documents its split)."""
    entry = get_entry(name)
    for option in options:
        if option not in entry.options:
            hint = closest(option, entry.options)
            did_you_mean = f" Did you mean '{hint}'?" if hint else ""
            valid = ", ".join(sorted(entry.options)) or "none"
            raise UserError(f"unknown option '{option}' for dataset '{name}'.{did_you_mean} "
                            f"Valid: {valid}")
    splits = entry.load(Path(data_dir) if data_dir is not None else None, **options)
    assert splits.name == name and splits.provenance["dataset"] == name
    return splits


def default_split_sizes(n_train: int | None, held_out: int, n_test: int | None,
                        test_is_validation: bool = False) -> dict[str, int] | None:
    """Split sizes under the default options, from file headers (None when they cannot split)."""
    if n_train is None or n_test is None or n_train <= held_out:
        return None
    return {"train": n_train - held_out, "validation": held_out,
            "test": held_out if test_is_validation else n_test}


def check_choice(dataset: str, option: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"dataset '{dataset}': option {option}={value!r} is not one of "
                        f"{', '.join(repr(c) for c in choices)}")


def check_int(dataset: str, option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"dataset '{dataset}': option {option} must be an integer, "
                        f"got {value!r}")
    return value


def provenance(*, dataset: str, version: str, comparable: bool, files: dict[str, str],
               checksums_verified: bool, checksum_note: str, split_sizes: dict[str, int],
               split_seed: int | None, source: Path, image_shape: tuple[int, int, int],
               n_bits: int = 8, **extra) -> dict:
    """The provenance dict every result row carries (JSON-serialisable: str/int/bool/dict)."""
    record = {
        "dataset": dataset,
        "version": version,
        "comparable_to_published": bool(comparable),
        "files": dict(files),
        "checksums_verified": bool(checksums_verified),
        "checksum_note": checksum_note,
        "split_sizes": dict(split_sizes),
        "split_seed": split_seed,
        "source": str(source),
        "image_shape": list(image_shape),
        "n_bits": n_bits,
    }
    record.update(extra)
    return record


def make_splits(name: str, train: Images, validation: Images, test: Images, n_bits: int = 8,
                **provenance_fields) -> DatasetSplits:
    """Build `DatasetSplits` and its provenance from the split tensors (sizes taken from them)."""
    image_shape = tuple(int(s) for s in train.shape[1:])
    sizes = {"train": len(train), "validation": len(validation), "test": len(test)}
    record = provenance(dataset=name, split_sizes=sizes, image_shape=image_shape,
                        n_bits=n_bits, **provenance_fields)
    return DatasetSplits(name, train, validation, test, image_shape, n_bits, record)
