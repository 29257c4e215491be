"""The codec study's rows: compress a set of images with the model, decompress them, and set
the real rate beside the model's own bits/dim on the same images (docs/results.md).

Rows (each with `codec`, `n_images`, `batch_size`):

* `codec_bits_per_dim`: the marginal rate, the payload's bits less the one-off initial bits,
  over the images' dimensions; `codec_file_bits_per_dim`: the whole file (header, names,
  checksum and initial bits included);
* `model_bits_per_dim`: the model's `loss_nats_per_dim` on the same images in bits (the
  negative ELBO of one posterior sample for a VAE, the exact NLL for an autoregressive model),
  and `codec_overhead_percent` = 100 · (codec - model) / model;
* `codec_initial_bits` (bits-back's seed consumption; 0 for range coding), and
  `codec_initial_bits_per_image` amortized over the coded images and over 10,000 images
  (`amortized_over`);
* `codec_encode_images_per_s`, `codec_decode_images_per_s` (wall time of compress and
  decompress, model passes included), and `codec_roundtrip_exact` (1 when every decoded image
  equals its original bit for bit, else 0).

The names never collide with a cell's `test_bits_per_dim` rows.
"""

from __future__ import annotations

import time

import torch

from harness.engine import lossless
from harness.errors import UserError
from models.likelihoods import nats_to_bits

AMORTIZE_OVER = 10_000  # the test-set size the initial bits are also spread over


def model_bits_per_dim(model, images: torch.Tensor, batch_size: int, seed: int = 0) -> float:
    """Mean of the model's `loss_nats_per_dim` over `images`, in bits (posterior noise of a VAE
    from a fixed seed)."""
    model = lossless.coding_model(model)
    total = 0.0
    with lossless.coding_mode(model), torch.random.fork_rng():
        torch.manual_seed(seed)
        for first in range(0, images.shape[0], batch_size):
            nats = model.loss(images[first:first + batch_size])["loss_nats_per_dim"]
            total += float(nats_to_bits(nats.double()).sum())
    return total / images.shape[0]


def codec_rows(model, family, images: torch.Tensor, batch_size: int | None = None,
               **options) -> list[dict]:
    """Compress and decompress `images` (uint8 (N, C, H, W)) with `model` (`batch_size` None:
    the codec's default); the rows above."""
    n = int(images.shape[0])
    names = [str(i) for i in range(n)]
    start = time.perf_counter()
    data = lossless.compress(model, family, images, names, batch_size, **options)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    try:
        decoded, _, header = lossless.decompress(model, family, data, "the codec study's file")
        exact = bool(torch.equal(decoded, images.to(decoded.device)))
    except UserError:
        exact, header = False, lossless.container.unpack(data, "the codec study's file")[0]
    decode_s = time.perf_counter() - start
    stats = lossless.rate(header)
    batch_size = int(header["codec_parameters"]["batch_size"])
    dims = n * images[0].numel()
    codec_bits = stats["marginal_bits"] / dims
    model_bits = model_bits_per_dim(model, images, batch_size)
    initial = stats["initial_bits"]
    base = {"codec": header["codec"], "n_images": n, "batch_size": batch_size}
    rows = [
        {"metric": "codec_bits_per_dim", "value": codec_bits},
        {"metric": "codec_file_bits_per_dim", "value": 8.0 * len(data) / dims},
        {"metric": "model_bits_per_dim", "value": model_bits},
        {"metric": "codec_overhead_percent", "value": 100.0 * (codec_bits - model_bits)
         / model_bits},
        {"metric": "codec_initial_bits", "value": initial},
        {"metric": "codec_initial_bits_per_image", "value": initial / n, "amortized_over": n},
        {"metric": "codec_initial_bits_per_image", "value": initial / AMORTIZE_OVER,
         "amortized_over": AMORTIZE_OVER},
        {"metric": "codec_encode_images_per_s", "value": n / encode_s},
        {"metric": "codec_decode_images_per_s", "value": n / decode_s},
        {"metric": "codec_roundtrip_exact", "value": 1.0 if exact else 0.0},
    ]
    return [{**row, **base} for row in rows]
