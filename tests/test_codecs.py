"""Codec reference rows: per-image PNG / WebP-lossless bits/dim (harness.engine.codecs)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.engine import codecs


def _noise(n, c, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, size, size), dtype=np.uint8)


@pytest.mark.parametrize("codec", ["png", "webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_codec_round_trip_is_lossless(codec, channels):
    if not codecs.codec_available(codec):
        pytest.skip(f"Pillow without {codec}")
    image = _noise(1, channels, 12)[0]
    assert np.array_equal(codecs.decode(codecs.encoded_bytes(image, codec), channels), image)


@pytest.mark.parametrize("codec", ["png", "webp"])
def test_bits_per_dim_is_eight_times_bytes_over_dims(codec):
    if not codecs.codec_available(codec):
        pytest.skip(f"Pillow without {codec}")
    images = _noise(3, 1, 16)
    bits = codecs.per_image_bits_per_dim(images, codec)
    assert bits.shape == (3,) and bits.dtype == np.float64
    for image, value in zip(images, bits):
        assert value == pytest.approx(8 * len(codecs.encoded_bytes(image, codec)) / 256)


@pytest.mark.parametrize("codec", ["png", "webp"])
def test_constant_image_compresses_far_below_noise(codec):
    if not codecs.codec_available(codec):
        pytest.skip(f"Pillow without {codec}")
    constant = np.full((1, 1, 28, 28), 128, dtype=np.uint8)
    noise = _noise(1, 1, 28)
    constant_bits = codecs.per_image_bits_per_dim(constant, codec)[0]
    noise_bits = codecs.per_image_bits_per_dim(noise, codec)[0]
    # Uniform noise cannot be compressed below 8 bits/dim; headers push it above.
    assert noise_bits > 8.0
    assert constant_bits < 1.0 < 8.0 * 0.2 * noise_bits


def test_one_channel_images_are_saved_as_grey():
    image = _noise(1, 1, 8)[0]
    assert codecs._pil_image(image).mode == "L"
    assert codecs._pil_image(_noise(1, 3, 8)[0]).mode == "RGB"


def test_unknown_codec_is_named():
    with pytest.raises(ValueError, match="unknown codec 'jpeg'"):
        codecs.per_image_bits_per_dim(_noise(1, 1, 4), "jpeg")
