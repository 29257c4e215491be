"""Sample-quality metrics: the properties users check them by, on synthetic image sets (and on
Fashion-MNIST when installed), and the feature extractors' identities and refusals."""

from __future__ import annotations

import hashlib
import io
import pickle
import sys

import numpy as np
import pytest
import torch

from harness.engine import quality_features
from harness.engine.quality_features import RANDOM_CNN_SEED, get_extractor, random_cnn_weights
from harness.engine.quality_metrics import (QUALITY_KEYS, NearestNeighbour, QualityReference,
                                            embed, frechet_distance, kernel_inception_distance,
                                            nearest_distances, quality_metrics)
from harness.errors import UserError

# The random_cnn's identity: changing its definition, seed or weights must change this on purpose.
RANDOM_CNN_SHA256 = "367ff19d91822d7a7621f40280bfa75b729a71cd57755482155eb4e559a84146"


def blobs(n: int, seed: int, size: int = 16, channels: int = 1) -> np.ndarray:
    """uint8 (n, C, size, size) images of 1-3 random Gaussian blobs: a smooth, varied
    distribution; two seeds give two independent draws from it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.zeros((n, channels, size, size), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(2, size - 2, 2)
            width = rng.uniform(1.5, size / 4)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
            images[i] += blob * rng.uniform(0.4, 1.0, (channels, 1, 1))
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def extractor():
    return get_extractor("random_cnn")


@pytest.fixture(scope="module")
def reference(extractor):
    """300 blob images scored against, with a 1,000-image train set for memorization."""
    return QualityReference(blobs(300, seed=1), train=blobs(1000, seed=2), extractor=extractor)


# ---------------------------------------------------------------- the random_cnn extractor

def test_random_cnn_identity_is_pinned_and_reproducible(extractor):
    assert extractor.name == "random_cnn" and extractor.dim == 224
    assert extractor.sha256 == RANDOM_CNN_SHA256
    assert get_extractor().sha256 == RANDOM_CNN_SHA256  # the default
    # The weights come from numpy's frozen legacy generator, so they are a function of the seed.
    first = random_cnn_weights()[0]
    assert first.shape == (32, 3, 3, 3) and first.dtype == np.float32
    assert np.isclose(first.std(), np.sqrt(2 / 27), rtol=0.1)  # He normal
    assert not np.array_equal(first, random_cnn_weights(RANDOM_CNN_SEED + 1)[0])


def test_random_cnn_features_shape_batching_and_channels(extractor):
    grey = blobs(20, seed=3, size=12)
    features = extractor.features(grey)
    assert features.shape == (20, 224) and features.dtype == np.float32
    np.testing.assert_allclose(extractor.features(grey, images_per_batch=7), features,
                               rtol=1e-5, atol=1e-6)  # batching changes nothing
    # A grey image and its grey RGB copy embed identically; a colour image differently.
    np.testing.assert_array_equal(extractor.features(np.repeat(grey, 3, axis=1)), features)
    colour = blobs(4, seed=4, size=12, channels=3)
    assert not np.allclose(extractor.features(colour), extractor.features(colour[:, :1]))
    assert extractor.features(blobs(2, seed=5, size=8)).shape == (2, 224)  # the smallest size
    assert extractor.features(np.zeros((2, 3, 9, 31), np.uint8)).shape == (2, 224)
    with pytest.raises(UserError, match="images are 7x16; .*'random_cnn' needs at least 8x8"):
        extractor.features(np.zeros((2, 1, 7, 16), np.uint8))


def test_unknown_extractor_is_named_with_the_valid_ones():
    with pytest.raises(UserError, match="unknown feature extractor 'incepton'. Did you mean "
                                        "'inception'. Valid: inception, random_cnn"):
        get_extractor("incepton")


# ---------------------------------------------------------------- the inception extractor

def test_inception_without_its_file_says_where_to_get_it(tmp_path):
    for path, words in [(None, "needs its weights file"),
                        (tmp_path / "pt_inception.pth", "no such weights file")]:
        with pytest.raises(UserError) as caught:
            get_extractor("inception", path)
        message = str(caught.value)
        assert words in message and "pt_inception-2015-12-05-6726825d.pth" in message
        assert "github.com/mseitzer/pytorch-fid/releases" in message
        assert "--inception-weights" in message and "\n" not in message


class _Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def test_inception_refuses_files_that_are_not_its_weights(tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    crafted = tmp_path / "crafted.pth"
    crafted.write_bytes(pickle.dumps({"fc.weight": _Payload()}, protocol=2))
    for path in (garbage, crafted):
        with pytest.raises(UserError, match="weights_only=True"):
            get_extractor("inception", path)
    assert "payload ran" not in capsys.readouterr().out  # refused without running it

    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(10, 2048)}, other)
    with pytest.raises(UserError, match=r"not the FID Inception weights \(no fc.weight of shape"):
        get_extractor("inception", other)


def test_inception_without_torch_fidelity_says_how_to_install(tmp_path, monkeypatch):
    weights = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, weights)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if absent
    with pytest.raises(UserError, match="runs on torch-fidelity.*pip install torch-fidelity"):
        get_extractor("inception", weights)


def test_inception_loads_a_random_weights_file_and_gives_2048_features(tmp_path, monkeypatch):
    """A file in the FID weights' format (torch-fidelity's own parameter names and shapes, random
    values): it loads, is hashed, never downloads, and gives pool3 features."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    network_class = fidelity.FeatureExtractorInceptionV3
    monkeypatch.setattr(fidelity, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("tried to download"))
    # Its constructor needs a state dict: build one with loading switched off, then keep it.
    monkeypatch.setattr(network_class, "load_state_dict", lambda self, state: None)
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    state = network_class("inception-v3-compat", ["2048"],
                          feature_extractor_weights_path=empty).state_dict()
    monkeypatch.undo()
    monkeypatch.setattr(fidelity, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("tried to download"))
    weights = tmp_path / "pt_inception-random.pth"
    torch.save(state, weights)

    inception = get_extractor("inception", weights)
    assert inception.name == "inception" and inception.dim == 2048
    assert inception.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    features = inception.features(blobs(2, seed=6, size=16))  # grey, resized to 299 inside
    assert features.shape == (2, 2048) and np.isfinite(features).all()


# ---------------------------------------------------------------- the metrics' properties

def test_identical_sets_score_perfectly(reference):
    row = reference.score(reference.reference.images)
    assert abs(row["fd"]) < 1e-6
    assert row["precision"] == row["recall"] == row["coverage"] == 1.0
    assert row["density"] == pytest.approx(1.0)
    assert abs(row["kid_mean"]) < 3 * row["kid_std"]
    # The reference scored against itself: by construction about 1% lie below the 1st percentile.
    assert row["memorized_fraction"] <= 0.01 and row["memorized_fraction_pixels"] <= 0.01


def test_two_draws_of_one_distribution_are_close_and_noise_is_far(reference):
    same = reference.score(blobs(300, seed=7))
    rng = np.random.default_rng(8)
    noise = reference.score(rng.integers(0, 256, (300, 1, 16, 16), dtype=np.uint8))
    assert abs(same["kid_mean"]) < 3 * same["kid_std"]  # consistent with 0
    assert same["precision"] > 0.6 and same["recall"] > 0.6 and same["density"] > 0.6
    assert noise["fd"] > 50 * same["fd"] and noise["kid_mean"] > 50 * same["kid_std"]
    assert noise["precision"] < 0.05 and noise["density"] < 0.05 and noise["coverage"] < 0.05
    # Half the samples noise: in between.
    half = reference.score(np.concatenate([blobs(150, seed=9), rng.integers(
        0, 256, (150, 1, 16, 16), dtype=np.uint8)]))
    assert same["fd"] < half["fd"] < noise["fd"]
    assert noise["precision"] < half["precision"] < same["precision"]


def test_copies_of_training_images_are_flagged_and_fresh_ones_are_not(reference):
    copies = reference.score(reference.train.images[:300])
    assert copies["memorized_fraction"] == 1.0 and copies["memorized_fraction_pixels"] == 1.0
    fresh = reference.score(blobs(300, seed=10))
    assert fresh["memorized_fraction"] <= 0.05 and fresh["memorized_fraction_pixels"] <= 0.05
    # A copy with every pixel moved by one grey level still counts as a copy.
    nudged = np.clip(reference.train.images[:300].astype(int) + 1, 0, 255).astype(np.uint8)
    assert reference.score(nudged)["memorized_fraction_pixels"] > 0.9


def test_without_a_train_set_memorization_is_null_and_the_row_has_every_key(extractor):
    row = quality_metrics(blobs(50, seed=11), blobs(60, seed=12), extractor=extractor)
    assert tuple(row) == QUALITY_KEYS
    assert row["memorized_fraction"] is None and row["memorized_fraction_pixels"] is None
    assert row["n_samples"] == 50 and row["n_reference"] == 60
    assert row["features"] == {"name": "random_cnn", "sha256": RANDOM_CNN_SHA256}
    assert all(isinstance(row[key], float) for key in QUALITY_KEYS[:7])


def test_shapes_and_sizes_are_checked(reference, extractor):
    with pytest.raises(UserError, match="samples are 1x12x12 but reference images are 1x16x16"):
        reference.score(blobs(30, seed=13, size=12))
    with pytest.raises(UserError, match="train images are 3x16x16 but reference images are"):
        QualityReference(blobs(30, seed=14), train=blobs(30, seed=15, channels=3),
                         extractor=extractor)
    with pytest.raises(UserError, match="has 9 images; .* need at least 10"):
        reference.score(blobs(9, seed=16))


def test_embedded_sets_are_reused_without_recomputing(reference, extractor, monkeypatch):
    samples = embed(blobs(40, seed=17), extractor)
    assert samples.images_per_s > 0
    monkeypatch.setattr(quality_features.FeatureExtractor, "features",
                        lambda *a, **k: pytest.fail("re-embedded"))
    shared = QualityReference(reference.reference, train=reference.train, extractor=extractor)
    assert shared.thresholds == reference.thresholds
    assert shared.score(samples) == reference.score(samples)


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift():
    features = np.random.default_rng(18).standard_normal((500, 16)).astype(np.float32)
    shift = np.linspace(-1, 1, 16, dtype=np.float32)
    # Equal covariances: the trace term vanishes and FD = |mean difference|^2 exactly.
    assert frechet_distance(features + shift, features) == pytest.approx(
        float((shift.astype(np.float64) ** 2).sum()), rel=1e-4)
    assert abs(frechet_distance(features, features)) < 1e-6


def test_kid_is_seeded_and_detects_a_shift():
    features = np.random.default_rng(19).standard_normal((400, 8)).astype(np.float32)
    other = np.random.default_rng(20).standard_normal((400, 8)).astype(np.float32)
    first = kernel_inception_distance(other, features, seed=3)
    assert first == kernel_inception_distance(other, features, seed=3)
    assert first != kernel_inception_distance(other, features, seed=4)
    assert abs(first[0]) < 3 * first[1]
    shifted = kernel_inception_distance(other + 1.0, features, seed=3)
    assert shifted[0] > 10 * shifted[1] > 0


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(21)
    base = rng.integers(0, 256, (700, 64)).astype(np.float32)
    queries = np.concatenate([rng.integers(0, 256, (40, 64)), base[:5]]).astype(np.float32)
    difference = queries[:, None, :].astype(np.float64) - base[None, :, :]  # (45, 700, 64)
    expected = np.sqrt((difference ** 2).sum(axis=2)).min(axis=1)
    found = nearest_distances(queries, base)
    np.testing.assert_allclose(found[:40], expected[:40], rtol=1e-4)
    assert np.all(found[40:] < 1.0)  # exact copies: 0 up to float32 rounding
    # Many small blocks of queries and of a uint8 base give the same distances.
    blocked = NearestNeighbour(base.astype(np.uint8), query_rows=16, base_rows=100)
    np.testing.assert_allclose(blocked.distances(queries), found, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------- Fashion-MNIST, when installed

@pytest.fixture(scope="module")
def fashion_mnist():
    from harness.data import load_dataset

    try:
        splits = load_dataset("fashion_mnist")
    except UserError as missing:
        pytest.skip(f"Fashion-MNIST not installed: {missing}")
    return splits.test[:2000].numpy(), splits.train[:5000].numpy()


def test_fashion_mnist_halves_copies_and_noise(fashion_mnist, extractor):
    test, train = fashion_mnist
    reference = QualityReference(test[:1000], train=train, extractor=extractor)
    halves = reference.score(test[1000:2000])
    assert abs(halves["kid_mean"]) < 3 * halves["kid_std"]
    assert halves["fd"] < 0.2 and halves["precision"] > 0.8 and halves["recall"] > 0.8
    assert halves["memorized_fraction"] < 0.04 and halves["memorized_fraction_pixels"] < 0.04
    copies = reference.score(train[:1000])
    assert copies["memorized_fraction"] == copies["memorized_fraction_pixels"] == 1.0
    noise = reference.score(np.random.default_rng(22).integers(0, 256, (1000, 1, 28, 28),
                                                                dtype=np.uint8))
    assert noise["fd"] > 100 * halves["fd"]
    assert noise["precision"] < 0.01 and noise["density"] < 0.01


def test_quality_features_module_never_downloads():
    # The inception path hands torch-fidelity bytes, never None, the one case where it downloads.
    source = open(quality_features.__file__).read()
    assert "feature_extractor_weights_path=io.BytesIO(data)" in source
    assert "load_state_dict_from_url" not in source and "urlopen" not in source


def test_within_a_radius_agrees_with_the_full_search():
    """The projected lower bound only skips queries that the full search would also reject."""
    rng = np.random.default_rng(23)
    base = rng.integers(0, 256, (3000, 200), dtype=np.uint8)  # 200 >= 4 x 32: projected
    near = np.clip(base[:50].astype(int) + rng.integers(-3, 4, (50, 200)), 0, 255)
    queries = np.concatenate([near, rng.integers(0, 256, (150, 200))]).astype(np.uint8)
    search = NearestNeighbour(base, query_rows=64, base_rows=700, projection_dim=32)
    assert search.axes is not None and search.axes.shape == (200, 32)
    axes = search.axes.double()
    assert torch.allclose(axes.T @ axes, torch.eye(32, dtype=torch.float64), atol=1e-5)
    distances = search.distances(queries)
    for radius in (0.0, 30.0, np.percentile(distances, 25), np.median(distances), 1e9):
        np.testing.assert_array_equal(search.within(queries, radius), distances < radius)
