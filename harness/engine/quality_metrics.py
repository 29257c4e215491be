"""Sample-quality metrics of a set of samples against a reference set, in one feature space.

* `fd`: Fréchet distance ||mu_s - mu_r||^2 + Tr(S_s + S_r - 2 (S_s S_r)^(1/2)) between Gaussians
  fitted to the features (Heusel et al. 2017, Section 3; torchmetrics'
  `FrechetInceptionDistance` in float64). Biased upward at small n (the bias shrinks like 1/n).
* `kid_mean`, `kid_std`: the unbiased MMD^2 with kernel (x.y / d + 1)^3 (Bińkowski et al. 2018,
  Section 3), its mean and standard deviation over `KID_SUBSETS` random subsets of
  min(1000, n/2) images from each set, n = the smaller set (torchmetrics'
  `KernelInceptionDistance`, subsets drawn from a seeded generator). Unbiased: it can be
  slightly negative when both sets come from one distribution.
* `precision`, `recall` (k = 3; Kynkäänniemi et al. 2019, Section 2) and `density`, `coverage`
  (k = 5; Naeem et al. 2020, Section 3), from the authors' `prdc` package.
* `memorized_fraction` (features) and `memorized_fraction_pixels` (raw pixel values 0-255 as
  float vectors of C*H*W): the data-copying check (after Meehan et al. 2020). With d(x) the
  Euclidean distance from x to its nearest TRAIN image and tau the 1st percentile of d(r) over
  the REFERENCE images r (numpy's default linear interpolation), it is the share of samples s
  with d(s) < tau, i.e. samples closer to a training image than 99% of held-out real images are.
  Held-out images therefore score about 0.01 and copies of training images 1.0. Null (None)
  without a train set.

Every row carries `n_samples`, `n_reference` and the extractor's `{"name", "sha256"}`: compare
only rows whose extractor and n agree. `QualityReference` embeds the reference and train sets
once, so many sample sets (one per model) are scored against them without recomputing.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.engine.quality_features import FeatureExtractor, get_extractor
from harness.errors import UserError

KID_SUBSETS = 100
KID_MAX_SUBSET = 1000
PRECISION_RECALL_K = 3
DENSITY_COVERAGE_K = 5
MEMORIZATION_PERCENTILE = 1.0  # of the reference images' nearest-train distances
MIN_IMAGES = 10  # per set: k-NN radii with k = 5 and two KID subsets need a few
QUALITY_KEYS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
                "memorized_fraction", "memorized_fraction_pixels", "n_samples", "n_reference",
                "features")


@dataclass(frozen=True, eq=False)
class Embedded:
    """Images and their features under one extractor, computed once and reused."""

    images: np.ndarray  # uint8 (N, C, H, W)
    features: np.ndarray  # float32 (N, dim)
    extractor: dict[str, str]  # {"name", "sha256"}
    seconds: float  # wall time of the feature extraction

    def __len__(self) -> int:
        return len(self.images)

    @property
    def images_per_s(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")


def embed(images: np.ndarray, extractor: FeatureExtractor) -> Embedded:
    """Features of uint8 `images` (N, C, H, W), timed."""
    start = time.perf_counter()
    features = extractor.features(images)
    return Embedded(np.asarray(images), features, extractor.identity,
                    time.perf_counter() - start)


class _Given(nn.Module):
    """Identity: torchmetrics' metrics take a feature module, and our features are computed."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim  # FrechetInceptionDistance reads the size from here

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(samples: np.ndarray, reference: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets (N, dim), in float64."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    # sync_on_compute=False: under torchrun only rank 0 scores samples, and a metric that
    # gathers from every rank would wait for ranks that never call it.
    metric = FrechetInceptionDistance(feature=_Given(samples.shape[1]), sync_on_compute=False)
    metric.update(torch.from_numpy(reference).double(), real=True)
    metric.update(torch.from_numpy(samples).double(), real=False)
    return float(metric.compute())


def kernel_inception_distance(samples: np.ndarray, reference: np.ndarray, *,
                              subsets: int = KID_SUBSETS, seed: int = 0) -> tuple[float, float]:
    """KID mean and std over `subsets` subsets of min(1000, n/2), drawn from `seed`."""
    from torchmetrics.image.kid import KernelInceptionDistance

    subset_size = min(KID_MAX_SUBSET, min(len(samples), len(reference)) // 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Given(samples.shape[1]), subsets=subsets,
                                         subset_size=subset_size, sync_on_compute=False)
    # float32 kernels: 2x faster than float64, and the mean moves by < 1% of its std (tests)
    metric.update(torch.from_numpy(reference).float(), real=True)
    metric.update(torch.from_numpy(samples).float(), real=False)
    with torch.random.fork_rng(devices=[]):  # its subsets come from torch's global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def precision_recall_density_coverage(samples: np.ndarray,
                                      reference: np.ndarray) -> dict[str, float]:
    """prdc's four numbers: precision/recall with k = 3, density/coverage with k = 5."""
    from prdc import compute_prdc

    # float64: scikit-learn's distances upcast float32 chunk by chunk, 1.3-2x slower
    reference, samples = reference.astype(np.float64), samples.astype(np.float64)
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        at_3 = compute_prdc(reference, samples, nearest_k=PRECISION_RECALL_K)
        at_5 = compute_prdc(reference, samples, nearest_k=DENSITY_COVERAGE_K)
    return {"precision": float(at_3["precision"]), "recall": float(at_3["recall"]),
            "density": float(at_5["density"]), "coverage": float(at_5["coverage"])}


class NearestNeighbour:
    """Exact Euclidean nearest-neighbour search in a fixed `base` set (m, dim).

    |q - b|^2 = |q|^2 + |b|^2 - 2 q.b in float32, one BLAS matmul per block of queries x base
    rows, after subtracting the base's mean (smaller norms, less cancellation). The base is kept
    as given (uint8 pixels stay one byte each) and converted block by block, so memory stays
    a few blocks whatever m is; its mean, squared norms and projection are computed once.

    `within(queries, radius)` answers "is the nearest base row closer than radius?" exactly,
    but searches in full only the queries that might be: projecting onto orthonormal axes never
    lengthens a vector, so |P(q - b)| <= |q - b|, and a query whose projected distance to every
    base row is at least the radius has no base row within it. The axes are the base's leading
    principal axes (tight bounds); a `projection_dim`-wide matmul replaces a `dim`-wide one."""

    def __init__(self, base: np.ndarray, query_rows: int = 2048, base_rows: int = 8192,
                 projection_dim: int = 96):
        self.base = base
        self.query_rows, self.base_rows = query_rows, base_rows
        self.centre = torch.from_numpy(
            np.mean(base, axis=0, dtype=np.float64).astype(np.float32))  # (dim,)
        self.base_squared = torch.cat([(block * block).sum(dim=1)
                                       for block in self._blocks()])  # (m,)
        self.axes = None  # (dim, k) orthonormal, or None when dim is already small
        # Worth it for wide vectors only: Fashion-MNIST pixels (784-d) are searched 2.8x faster
        # at k = 96 (86% of held-out images skipped), its 224-d features not at all.
        if base.shape[1] >= 4 * projection_dim:
            self.axes = _principal_axes(base, self.centre, projection_dim)
            projected = torch.cat([block @ self.axes for block in self._blocks()])  # (m, k)
            self.projected = projected
            self.projected_squared = (projected * projected).sum(dim=1)  # (m,)

    def _blocks(self):
        for start in range(0, len(self.base), self.base_rows):
            block = np.asarray(self.base[start:start + self.base_rows], dtype=np.float32)
            yield torch.from_numpy(block) - self.centre  # (rows, dim), centred

    def _queries(self, queries: np.ndarray):
        for first in range(0, len(queries), self.query_rows):
            block = np.asarray(queries[first:first + self.query_rows], dtype=np.float32)
            yield first, torch.from_numpy(block) - self.centre  # (n_q, dim), centred

    @staticmethod
    def _min_squared(q: torch.Tensor, base_blocks, base_squared: torch.Tensor,
                     base_rows: int) -> torch.Tensor:
        """(n_q,) min over the base of |q - b|^2 for centred q and base blocks."""
        best = torch.full((len(q),), float("inf"))
        for start, block in zip(range(0, len(base_squared), base_rows), base_blocks):
            # (n_q, rows): |b|^2 - 2 q.b; |q|^2 is added after the min (constant per row)
            partial = torch.addmm(base_squared[start:start + len(block)], q, block.T,
                                  beta=1.0, alpha=-2.0)
            best = torch.minimum(best, partial.min(dim=1).values)
        return (best + (q * q).sum(dim=1)).clamp_min(0)

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """float64 (n,): each query's distance to its nearest base row."""
        out = np.empty(len(queries), dtype=np.float64)
        with torch.inference_mode():
            for first, q in self._queries(queries):
                squared = self._min_squared(q, self._blocks(), self.base_squared, self.base_rows)
                out[first:first + len(q)] = squared.sqrt().numpy()
        return out

    def within(self, queries: np.ndarray, radius: float) -> np.ndarray:
        """bool (n,): whether each query's nearest base row is closer than `radius`; the same
        answer as `distances(queries) < radius`."""
        if self.axes is None:
            return self.distances(queries) < radius
        candidates = np.zeros(len(queries), dtype=bool)
        with torch.inference_mode():
            for first, q in self._queries(queries):
                projected = q @ self.axes  # (n_q, k)
                blocks = (self.projected[s:s + self.base_rows]
                          for s in range(0, len(self.projected), self.base_rows))
                bound = self._min_squared(projected, blocks, self.projected_squared,
                                          self.base_rows)
                # A margin far above float32 rounding: a query is only ever searched needlessly.
                candidates[first:first + len(q)] = (bound < radius ** 2 * 1.001).numpy()
        found = np.zeros(len(queries), dtype=bool)
        if candidates.any():
            found[candidates] = self.distances(queries[candidates]) < radius
        return found


def _principal_axes(base: np.ndarray, centre: torch.Tensor, k: int) -> torch.Tensor:
    """(dim, k) orthonormal leading principal axes of up to 2,048 evenly spaced base rows
    (randomised SVD from a fixed seed: any orthonormal axes keep the bound valid, these keep it
    tight, at O(rows * dim * k) cost rather than a full SVD's)."""
    rows = np.linspace(0, len(base) - 1, min(len(base), 2048)).astype(np.int64)
    sample = torch.from_numpy(np.asarray(base[rows], dtype=np.float64)) - centre.double()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, v = torch.svd_lowrank(sample, q=min(k + 10, *sample.shape), niter=2)
    return v[:, :k].contiguous().float()  # (dim, k)


def nearest_distances(queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """float64 (n,): each query's Euclidean distance to its nearest row of `base` (m, dim)."""
    return NearestNeighbour(base).distances(queries)


def _pixels(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)  # (N, C*H*W) uint8: a view, converted in blocks


def _check_set(what: str, images: np.ndarray) -> None:
    if len(images) < MIN_IMAGES:
        raise UserError(f"{what} has {len(images)} images; sample-quality metrics need at "
                        f"least {MIN_IMAGES}")


class QualityReference:
    """A reference set, and optionally the train set, embedded once; `score` rates samples.

        reference = QualityReference(test_images[:n], train=train_images)   # once per run
        row = reference.score(samples)                                      # once per model
        floor = reference.score(test_images[n:2 * n])                       # real vs real

    `reference` and `train` may be uint8 (N, C, H, W) arrays or `Embedded` (features computed
    elsewhere with the same extractor, e.g. train features shared by several references).
    """

    def __init__(self, reference: np.ndarray | Embedded, train: np.ndarray | Embedded | None = None,
                 extractor: FeatureExtractor | None = None):
        self.extractor = extractor or get_extractor()
        self.reference = self._embedded("the reference set", reference)
        self.train = None if train is None else self._embedded("the train set", train)
        self.image_shape = tuple(self.reference.images.shape[1:])
        self.thresholds: dict[str, float] | None = None
        if self.train is not None:
            if tuple(self.train.images.shape[1:]) != self.image_shape:
                raise UserError(f"train images are {_shape(self.train.images)} but reference "
                                f"images are {_shape(self.reference.images)}; use one shape")
            self._nearest_train = {"features": NearestNeighbour(self.train.features),
                                   "pixels": NearestNeighbour(_pixels(self.train.images))}
            # tau: the 1st percentile of the reference images' nearest-train distances.
            self.thresholds = {
                space: float(np.percentile(self._nearest_train[space].distances(vectors),
                                           MEMORIZATION_PERCENTILE))
                for space, vectors in (("features", self.reference.features),
                                       ("pixels", _pixels(self.reference.images)))}

    def _embedded(self, what: str, images: np.ndarray | Embedded) -> Embedded:
        if isinstance(images, Embedded):
            assert images.extractor == self.extractor.identity, (images.extractor, what)
            return images
        _check_set(what, images)
        return embed(images, self.extractor)

    def memorized_fractions(self, samples: Embedded) -> tuple[float | None, float | None]:
        """(feature, pixel) share of samples nearer a train image than tau (module docstring)."""
        if self.train is None:
            return None, None
        by_features = self._nearest_train["features"].within(samples.features,
                                                             self.thresholds["features"])
        by_pixels = self._nearest_train["pixels"].within(_pixels(samples.images),
                                                         self.thresholds["pixels"])
        return float(np.mean(by_features)), float(np.mean(by_pixels))

    def score(self, samples: np.ndarray | Embedded, *, kid_subsets: int = KID_SUBSETS,
              seed: int = 0) -> dict:
        """The metrics of `samples` against the reference: a dict with `QUALITY_KEYS`."""
        images = samples.images if isinstance(samples, Embedded) else np.asarray(samples)
        if tuple(images.shape[1:]) != self.image_shape:
            raise UserError(f"samples are {_shape(images)} but reference images are "
                            f"{_shape(self.reference.images)}; use one shape")
        samples = self._embedded("the sample set", samples)
        fake, real = samples.features, self.reference.features
        kid_mean, kid_std = kernel_inception_distance(fake, real, subsets=kid_subsets, seed=seed)
        memorized, memorized_pixels = self.memorized_fractions(samples)
        row = {"fd": frechet_distance(fake, real), "kid_mean": kid_mean, "kid_std": kid_std,
               **precision_recall_density_coverage(fake, real),
               "memorized_fraction": memorized, "memorized_fraction_pixels": memorized_pixels,
               "n_samples": len(samples), "n_reference": len(self.reference),
               "features": dict(self.extractor.identity)}
        assert tuple(row) == QUALITY_KEYS
        return row


def quality_metrics(samples: np.ndarray, reference: np.ndarray, train: np.ndarray | None = None,
                    extractor: FeatureExtractor | None = None, *, seed: int = 0) -> dict:
    """One call: embed `reference` (and `train`), then score `samples` (uint8 (N, C, H, W))."""
    return QualityReference(reference, train, extractor).score(samples, seed=seed)


def _shape(images: np.ndarray) -> str:
    return "x".join(str(s) for s in images.shape[1:])  # C x H x W
