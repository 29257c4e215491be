"""`harness quality SAMPLES REFERENCE`: sample-quality metrics of one image set against another.

SAMPLES, REFERENCE and `--train` are each a PNG folder, a uint8 `.npy` of (N, C, H, W) images
(e.g. a results cell's `samples.npy`) or `DATASET:SPLIT[:N]` (harness.data.sources). Prints a
table; `--json` writes the metrics (harness.engine.quality_metrics.QUALITY_KEYS) atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from harness import atomic
from harness.data.sources import ImageSet, load_images
from harness.engine.quality_features import get_extractor
from harness.engine.quality_metrics import MIN_IMAGES, QualityReference
from harness.errors import UserError


def run_quality(samples: str, reference: str, *, train: str | None = None,
                features: str = "random_cnn", inception_weights: str | None = None,
                n: int | None = None, json_path: str | Path | None = None,
                data_dir: str | Path | None = None) -> dict:
    """Score `samples` against `reference` (specs as above); print the table, return the row."""
    extractor = get_extractor(features, inception_weights)  # a bad name or file fails first
    sample_set = load_images(samples, data_dir)
    reference_set = load_images(reference, data_dir)
    train_set = load_images(train, data_dir) if train is not None else None
    if n is not None:
        sample_set = _first(sample_set, n, "SAMPLES", samples)
        reference_set = _first(reference_set, n, "REFERENCE", reference)
    sample_set = _matching(sample_set, reference_set, "SAMPLES", samples, reference)
    if train_set is not None:
        train_set = _matching(train_set, reference_set, "--train", train, reference)

    start = time.perf_counter()
    scorer = QualityReference(reference_set.images,
                              train_set.images if train_set is not None else None, extractor)
    row = scorer.score(sample_set.images)
    seconds = time.perf_counter() - start
    if json_path is not None:
        atomic.write_json(json_path, row)
    print(format_table(row, sample_set, reference_set, train_set, scorer, seconds))
    return row


def _first(images: ImageSet, n: int, what: str, spec: str) -> ImageSet:
    if n < MIN_IMAGES:
        raise UserError(f"--n {n}: sample-quality metrics need at least {MIN_IMAGES} images")
    if n > len(images):
        raise UserError(f"--n {n}: {what} {spec} has only {len(images)} images; pass "
                        f"--n {len(images)} or fewer")
    return ImageSet(images.images[:n], images.names[:n],
                    f"{images.description}, first {n}")


def _matching(images: ImageSet, reference: ImageSet, what: str, spec: str,
              reference_spec: str) -> ImageSet:
    """`images` in the reference's shape: RGB files whose three channels are equal (grey
    saved as RGB, e.g. by torchvision's save_image) become one channel for a grey reference."""
    shape, wanted = images.image_shape, reference.image_shape
    if shape == wanted:
        return images
    pixels = images.images
    if (shape[1:] == wanted[1:] and shape[0] == 3 and wanted[0] == 1
            and np.array_equal(pixels[:, 0], pixels[:, 1])
            and np.array_equal(pixels[:, 0], pixels[:, 2])):
        return ImageSet(np.ascontiguousarray(pixels[:, :1]), images.names,
                        f"{images.description}, grey RGB read as 1 channel")
    raise UserError(f"{what} {spec}: images are {_shape(shape)} (CxHxW) but REFERENCE "
                    f"{reference_spec} images are {_shape(wanted)}; compare images of one "
                    "shape")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(row: dict, samples: ImageSet, reference: ImageSet, train: ImageSet | None,
                 scorer: QualityReference, seconds: float) -> str:
    """The printed report: where the images came from, the extractor, one metric a line."""
    features = scorer.reference
    no_train = "- (no --train: no memorization check)"
    lines = [
        f"samples    {samples.description}",
        f"reference  {reference.description}",
        f"train      {train.description if train is not None else no_train}",
        f"features   {row['features']['name']}  sha256 {row['features']['sha256']}",
        f"           {features.features.shape[1]}-d, {features.images_per_s:,.0f} images/s; "
        f"all metrics in {seconds:.1f} s",
        "",
        f"{'metric':<27} value",
        f"{'fd':<27} {_number(row['fd'])}",
        f"{'kid_mean ± kid_std':<27} {_number(row['kid_mean'])} ± {_number(row['kid_std'])}",
        f"{'precision (k=3)':<27} {_number(row['precision'])}",
        f"{'recall (k=3)':<27} {_number(row['recall'])}",
        f"{'density (k=5)':<27} {_number(row['density'])}",
        f"{'coverage (k=5)':<27} {_number(row['coverage'])}",
        f"{'memorized_fraction':<27} {_number(row['memorized_fraction'])}",
        f"{'memorized_fraction_pixels':<27} {_number(row['memorized_fraction_pixels'])}",
        f"{'n_samples':<27} {row['n_samples']}",
        f"{'n_reference':<27} {row['n_reference']}",
    ]
    return "\n".join(lines)
