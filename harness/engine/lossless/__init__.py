"""Lossless codecs driven by the models: a file of real bytes whose length is the model's
bits/dim plus the coder's overhead (arithmetic coding: Witten et al. 1987; bits-back ANS:
Townsend et al. 2019 and 2020).

* `codec_for(family, batch_size=None)`: the codec the family's declared capabilities allow
  (at its own default batch size when None):
  range coding of the exact categoricals for an autoregressive family with
  `models.coding.STEPWISE_PROBABILITIES` (`ar_coding`), bits-back ANS for a hierarchical VAE
  with `models.coding.TOP_DOWN_LATENTS` (`bits_back`). Never chosen by the family's name.
* `compress(model, family, images, names, batch_size) -> bytes`,
  `decompress(model, family, data, source, model_name) -> (images, names, header)` and
  `rate(header)` (initial and marginal bits), over the file format of `container`.
* `rows.codec_rows(...)`: the metric rows of a run's codec study.

Coding runs on the CPU with one thread, without gradients, in eval mode: the encoder and the
decoder then compute the same floats from the same inputs (the header records the machine; see
`container`).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from harness.engine.lossless import container
from harness.engine.lossless.ar_coding import ArithmeticCodec
from harness.engine.lossless.bits_back import BitsBackCodec
from harness.engine.lossless.segments import corrupt
from harness.errors import UserError
from models import coding

CODECS = {codec.name: codec for codec in (ArithmeticCodec, BitsBackCodec)}


def codec_for(family, batch_size: int | None = None, **options: Any):
    """The codec for `family` by its declared capabilities; ValueError when it has none."""
    for codec in CODECS.values():
        if family.can(codec.capability):
            return codec(batch_size or codec.default_batch_size, **options)
    raise ValueError(f"model family '{family.name}' declares no capability a lossless codec "
                     f"can use ('{coding.STEPWISE_PROBABILITIES}' for an autoregressive model, "
                     f"'{coding.TOP_DOWN_LATENTS}' for a hierarchical VAE)")


def coding_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the CPU (a copy when it lives elsewhere): coding is promised there only."""
    device = next(model.parameters()).device
    return model if device.type == "cpu" else copy.deepcopy(model).to("cpu")


@contextlib.contextmanager
def coding_mode(model: torch.nn.Module):
    """One thread, inference mode (as the evaluation's studies run), eval mode; restored
    afterwards."""
    threads, training = torch.get_num_threads(), model.training
    torch.set_num_threads(1)
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)
        model.train(training)


def _check_images(images: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 \
            or images.dim() != 4 or tuple(images.shape[1:]) != tuple(shape):
        got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
               else type(images).__name__)
        raise ValueError(f"images: expected uint8 (N, {', '.join(map(str, shape))}), got {got}")
    if images.shape[0] == 0:
        raise ValueError("images: nothing to compress (no images)")


def compress(model, family, images: torch.Tensor, names: list[str],
             batch_size: int | None = None, model_record: dict[str, Any] | None = None, **options: Any) -> bytes:
    """The file's bytes. `model_record` (plain data, e.g. the family and config) goes into the
    header for the record; decoding never trusts it (the model hash decides)."""
    codec = codec_for(family, batch_size, **options)
    model = coding_model(model)
    shape = tuple(family.image_shape(model.config))
    _check_images(images, shape)
    assert len(names) == images.shape[0], (len(names), images.shape)
    codec.check(model)
    with coding_mode(model):
        segments, layout = codec.encode(model, images.to("cpu").contiguous())
    header = {"codec": codec.name, "codec_version": codec.version,
              "codec_parameters": codec.parameters(), "codec_layout": layout,
              "family": family.name,
              "model_sha256": container.model_sha256(model), "image_shape": list(shape),
              "n_images": int(images.shape[0]), "names": list(names),
              "environment": container.environment(), "model": model_record or {}}
    return container.pack(header, segments)


def rate(header: dict[str, Any]) -> dict[str, float]:
    """{"initial_bits", "marginal_bits"} of a file's payload, from its (checked) header."""
    codec = CODECS[header["codec"]]
    return codec.rate(header["codec_layout"], sum(header["segment_bytes"]))


def decompress(model, family, data: bytes, source: str,
               model_name: str = "the model") -> tuple[torch.Tensor, list[str], dict]:
    """(images uint8 (N, C, H, W), names, header) of a file; `UserError` (one line) when the
    file is damaged, made by another model or on another machine kind."""
    header, segments = container.unpack(data, source)
    model = coding_model(model)
    container.check_decodable(header, container.model_sha256(model), source, model_name)
    codec_class = CODECS.get(header.get("codec"))
    if codec_class is None or header.get("codec_version") != codec_class.version:
        raise UserError(f"{source}: codec {header.get('codec')!r} version "
                        f"{header.get('codec_version')!r} is not one this harness decodes "
                        f"({', '.join(f'{n} {c.version}' for n, c in CODECS.items())})")
    shape = tuple(family.image_shape(model.config))
    if tuple(header.get("image_shape", ())) != shape or header.get("family") != family.name:
        raise UserError(f"{source}: holds {header.get('family')} images of shape "
                        f"{header.get('image_shape')}, {model_name} codes {family.name} {list(shape)}")
    try:
        codec = codec_class(**header["codec_parameters"])
        n_images, names, layout = int(header["n_images"]), list(header["names"]), \
            dict(header["codec_layout"])
        assert n_images == len(names) > 0 and all(isinstance(n, str) for n in names)
    except (KeyError, TypeError, ValueError, AssertionError):
        raise corrupt(source, "its header lacks or garbles the codec's settings") from None
    with coding_mode(model):
        images = codec.decode(model, segments, n_images, source, layout)
    return images.clone(), names, header  # a normal tensor, not an inference-mode one
