"""Reference rows from general-purpose lossless codecs: what PNG and WebP achieve per image.

Every image is encoded on its own with Pillow, headers included, at the codec's best lossless
setting (PNG: zlib level 9 with `optimize`; WebP: `lossless`, quality 100, method 6), as in the
Bit-Swap comparison (Kingma et al. 2019, Table 2): bits/dim = 8 · bytes / (C · H · W). One-channel
images are saved as mode "L", three-channel ones as "RGB". A density model that loses to these on
the same split has not learned much.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

CODEC_SETTINGS: dict[str, tuple[str, dict]] = {
    "png": ("PNG", {"optimize": True, "compress_level": 9}),
    "webp": ("WEBP", {"lossless": True, "quality": 100, "method": 6}),
}


def _pil_image(image: np.ndarray):
    """(C, H, W) uint8 → a Pillow image: mode "L" for one channel, "RGB" for three."""
    from PIL import Image

    channels = image.shape[0]
    if channels == 1:
        return Image.fromarray(np.ascontiguousarray(image[0]), mode="L")
    if channels == 3:
        return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), mode="RGB")
    raise ValueError(f"codecs encode 1- or 3-channel images, got {channels} channels")


def encoded_bytes(image: np.ndarray, codec: str) -> bytes:
    """One (C, H, W) uint8 image encoded alone by `codec` ("png" or "webp")."""
    fmt, options = CODEC_SETTINGS[codec]
    buffer = io.BytesIO()
    _pil_image(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, channels: int) -> np.ndarray:
    """Encoded bytes → (C, H, W) uint8 (for round-trip checks). WebP has no grey mode: it stores
    an "L" image as RGB with three equal channels, so ask for the channels you saved."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def codec_available(codec: str) -> bool:
    from PIL import features

    return codec == "png" or bool(features.check("webp"))


def per_image_bits_per_dim(images, codec: str,
                           progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """float64 (N,) bits/dim of each uint8 (N, C, H, W) image encoded alone by `codec`."""
    if codec not in CODEC_SETTINGS:
        raise ValueError(f"unknown codec '{codec}'; valid: {', '.join(CODEC_SETTINGS)}")
    images = np.asarray(images)
    assert images.dtype == np.uint8 and images.ndim == 4, (images.dtype, images.shape)
    n = images.shape[0]
    dims = int(np.prod(images.shape[1:]))
    out = np.empty(n, dtype=np.float64)
    for index in range(n):
        out[index] = 8.0 * len(encoded_bytes(images[index], codec)) / dims
        if progress is not None and (index + 1) % 1000 == 0:
            progress(index + 1, n)
    return out
