"""How good the samples are, measured offline: FD, KID, precision/recall (Kynkäänniemi et al.
2019, k = 3), density/coverage (Naeem et al. 2020, k = 5) and memorization, of the cell's
first n = min(eval.quality_samples, N_test / 2) samples against the first n test images, with memorization measured against the training split. docs/quality.md defines
each metric and the extractors.

Rows (one per metric: `fd`, `kid_mean`, `kid_std`, `precision`, `recall`, `density`,
`coverage`, `memorized_fraction`, `memorized_fraction_pixels`) carry `quality_set`
("samples", or "real_vs_real": the next n test images against the same reference, the floor
each metric has at this n), `n_samples`, `n_reference`, `features` and `features_sha256`.

Computed once per run, in `cache_dir` (the run's cells share them): the train split's features
(keyed by the extractor and the images' bytes) and the real-vs-real scores. The metrics'
libraries (torchmetrics, prdc) are imported only when the study runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from harness import atomic
from harness.engine.artifacts import save_npy
from harness.engine.studies.base import SAMPLES, Study, StudyContext, StudySkipped, register

METRICS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
           "memorized_fraction", "memorized_fraction_pixels")


def as_array(images) -> np.ndarray:
    """uint8 (N, C, H, W) numpy from a tensor, an array or a lazily loaded split."""
    if isinstance(images, np.ndarray):
        return images
    if isinstance(images, torch.Tensor):
        return images.cpu().numpy()
    return np.asarray(images[np.arange(len(images))])


def _key(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else str(part).encode())
        digest.update(b"|")
    return digest.hexdigest()[:24]


def _train_features(train: np.ndarray, extractor, cache_dir: Path | None):
    """The train split's `Embedded` features, from the run's cache when another cell made them."""
    from harness.engine.quality_metrics import Embedded, embed

    if cache_dir is None:
        return embed(train, extractor)
    path = Path(cache_dir) / "quality" / f"train-{_key(extractor.sha256, train.shape, train)}.npy"
    if path.is_file():
        try:
            features = np.load(path, allow_pickle=False)
            if features.shape == (len(train), extractor.dim):
                return Embedded(train, features, extractor.identity, 0.0)
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    embedded = embed(train, extractor)
    save_npy(embedded.features, path)
    return embedded


def _rows(scores: dict, quality_set: str) -> list[dict]:
    shared = {"quality_set": quality_set, "n_samples": scores["n_samples"],
              "n_reference": scores["n_reference"], "features": scores["features"]["name"],
              "features_sha256": scores["features"]["sha256"]}
    return [{"metric": name, "value": scores[name], **shared} for name in METRICS
            if scores[name] is not None]


MIN_SET = 10  # images per set: k-NN radii with k = 5 and two KID subsets need a few


def quality_size(config, n_test: int) -> int:
    """n: samples scored, and reference images (the first n test images; the next n give the
    floor); 0 when the test split is too small for two sets of MIN_SET."""
    n = min(config.quality_samples, n_test // 2)
    return n if n >= MIN_SET else 0


def run(context: StudyContext) -> list[dict]:
    try:  # the metrics' libraries are imported only where the study runs
        import prdc  # noqa: F401
        import torchmetrics  # noqa: F401

        from harness.engine.quality_features import get_extractor
        from harness.engine.quality_metrics import MIN_IMAGES, QualityReference
    except ImportError as error:
        raise StudySkipped(f"needs the {error.name} package (pip install prdc torchmetrics)") \
            from None

    assert MIN_IMAGES <= MIN_SET, (MIN_IMAGES, MIN_SET)
    config = context.config
    n_test = context.images.shape[0]
    n = quality_size(config, n_test)
    if n == 0:
        raise StudySkipped(f"needs at least {2 * MIN_SET} test images (a reference and a "
                           f"disjoint real-vs-real set of {MIN_SET}); the cell has {n_test}")
    extractor = get_extractor(config.quality_features, config.quality_inception_weights)
    reference = as_array(context.images[:n])
    disjoint = as_array(context.images[n:2 * n])
    train = context.train_images()
    train = as_array(train) if train is not None and len(train) >= MIN_IMAGES else None
    embedded_train = _train_features(train, extractor, context.cache_dir) \
        if train is not None else None
    scorer = QualityReference(reference, train=embedded_train, extractor=extractor)
    samples = context.samples()[:n]
    rows = _rows(scorer.score(samples, seed=config.noise_seed), "samples")
    # The floor: the same for every cell of the run that shares the reference and train set.
    floor_path = None
    if context.cache_dir is not None:
        floor_path = Path(context.cache_dir) / "quality" / (
            "real-" + _key(extractor.sha256, reference, disjoint, config.noise_seed,
                           "none" if train is None else _key(train.shape, train)) + ".json")
    floor = None
    if floor_path is not None and floor_path.is_file():
        try:
            floor = json.loads(floor_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            floor = None
    if floor is None:
        floor = scorer.score(disjoint, seed=config.noise_seed)
        if floor_path is not None:
            atomic.write_json(floor_path, floor)
    return rows + _rows(floor, "real_vs_real")


STUDY = register(Study(
    name="sample_quality", scope="cell", run=run, reads=frozenset({SAMPLES}),
    writes=METRICS, description="FD, KID, precision/recall, density/coverage, memorization",
    enabled=lambda config: config.quality_samples > 0,
    n_samples=quality_size,
    # Features, KID subsets, k-NN radii and the nearest-train searches: ~15 s per cell at
    # n = 1,000 on one core; the train features once per run.
    estimate_s=lambda cost, config: 15.0 * quality_size(config, cost.n_test) / 1000))
