"""Architecture as short layer strings (VDVAE, Child 2021; the notation of its public reference
implementation, openai/vdvae).

Encoder tokens: `RxN` (N residual blocks at resolution R), `RdK` (one block at R, then K×K average
pooling), `R` (one block). Decoder tokens: `RxN` (N top-down blocks), `RmS` (one top-down block at
R whose input first adds the nearest-upsampled state of resolution S), `R` (one block).
Width strings `"R:W,R:W"` give per-resolution channel widths; other resolutions use `width`.

Errors are `ValueError`s that name the config field and the offending token.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Layer:
    """One block of a layer string: its resolution and, for `RdK`/`RmS`, the number after d/m."""

    resolution: int
    down_rate: int | None = None  # encoder `RdK`
    mixin: int | None = None  # decoder `RmS`


def _positive_int(text: str, field: str, token: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{field}: token '{token}' does not parse: '{text}' is not a positive "
                         f"integer (tokens look like 32x3, 32d2, 16m8 or 32)")
    return int(text)


@lru_cache(maxsize=256)
def parse_layer_string(text: str, kind: str, field: str = "blocks") -> tuple[Layer, ...]:
    """Blocks of an encoder (`kind="encoder"`) or decoder (`kind="decoder"`) string, in order."""
    assert kind in ("encoder", "decoder"), kind
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{field}: empty layer string; give e.g. '32x2,32d2,16x2'")
    layers: list[Layer] = []
    for token in text.replace(" ", "").split(","):
        if "x" in token:
            res, count = token.split("x", 1)
            layers += [Layer(_positive_int(res, field, token))] * _positive_int(count, field, token)
        elif "d" in token:
            if kind == "decoder":
                raise ValueError(f"{field}: token '{token}' does not parse: 'RdK' (pooling) is an "
                                 f"encoder token; the decoder upsamples with 'RmS'")
            res, rate = token.split("d", 1)
            layers.append(Layer(_positive_int(res, field, token),
                                down_rate=_positive_int(rate, field, token)))
        elif "m" in token:
            if kind == "encoder":
                raise ValueError(f"{field}: token '{token}' does not parse: 'RmS' (mix-in) is a "
                                 f"decoder token; the encoder pools with 'RdK'")
            res, mixin = token.split("m", 1)
            layers.append(Layer(_positive_int(res, field, token),
                                mixin=_positive_int(mixin, field, token)))
        else:
            layers.append(Layer(_positive_int(token, field, token)))
    return tuple(layers)


def parse_width_string(text: str, field: str = "custom_width_str") -> dict[int, int]:
    """`"32:512,16:256"` -> {32: 512, 16: 256}; the empty string -> {}."""
    widths: dict[int, int] = {}
    if not text or not text.strip():
        return widths
    for token in text.replace(" ", "").split(","):
        if token.count(":") != 1:
            raise ValueError(f"{field}: token '{token}' does not parse; use 'R:W,R:W', "
                             f"e.g. '32:512,16:256'")
        res, width = token.split(":")
        widths[_positive_int(res, field, token)] = _positive_int(width, field, token)
    return widths
