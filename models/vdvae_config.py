"""VDVAE configuration: the frozen dataclass, its validation, an analytic parameter count and the
width search for parameter-matched comparisons (VDVAE, Child 2021, and its reference code).

Every impossible combination is a `ValueError` raised at construction that names the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.layer_strings import Layer, parse_layer_string, parse_width_string

_INT_FIELDS = ("width", "zdim", "num_mixtures", "no_bias_above", "image_size", "image_channels",
               "n_bits")
_FLOAT_FIELDS = ("bottleneck_multiple", "input_shift", "input_scale")


@dataclass(frozen=True)
class VDVAEConfig:
    """A VDVAE architecture. Defaults are the published CIFAR-10 model (39,145,700 parameters).

    * `width`, `custom_width_str` ("R:W,..."): channels per resolution.
    * `enc_blocks`, `dec_blocks`: layer strings (see `models.layer_strings`).
    * `zdim`: latent channels per top-down block; `bottleneck_multiple`: middle width of every
      bottleneck block as a fraction of its width; `num_mixtures`: DMOL components.
    * `no_bias_above`: decoder resolutions up to this one start from a learned bias tensor.
    * Network input is `(x' + input_shift) * input_scale` with x' the uint8 value, or x/255 when
      `input_unit_interval` (the reference's FFHQ-1024 statistics are for x in [0, 1]).
    * `n_bits`: likelihood on the n-bit grid k/(2^n - 1), k = x >> (8 - n) (the clean form; the
      reference's 5-bit FFHQ variant is not reproduced).
    * `effective_depth`: G contiguous groups of top-down blocks whose latents are conditionally
      independent inside a group (the paper's depth ablation); None means G = L (the normal model).
    """

    width: int = 384
    enc_blocks: str = "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3"
    dec_blocks: str = "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21"
    zdim: int = 16
    bottleneck_multiple: float = 0.25
    num_mixtures: int = 10
    no_bias_above: int = 64
    custom_width_str: str = ""
    image_size: int = 32
    image_channels: int = 3
    input_shift: float = -120.63838
    input_scale: float = 1.0 / 64.16736
    input_unit_interval: bool = False
    n_bits: int = 8
    effective_depth: int | None = None

    def __post_init__(self):
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if not isinstance(self.input_unit_interval, bool):
            raise ValueError(f"input_unit_interval: expected true/false, "
                             f"got {self.input_unit_interval!r}")
        for name in ("width", "zdim", "num_mixtures", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels: DMOL supports 1 or 3 channels, "
                             f"got {self.image_channels}")
        if not 1 <= self.n_bits <= 8:
            raise ValueError(f"n_bits: must be in 1..8, got {self.n_bits}")
        if self.input_scale == 0:
            raise ValueError("input_scale: must be non-zero")
        if self.bottleneck_multiple <= 0:
            raise ValueError(f"bottleneck_multiple: must be > 0, got {self.bottleneck_multiple}")
        _check_encoder(self)
        _check_decoder(self)
        _check_widths(self)
        depth = self.effective_depth
        n_layers = self.n_top_down
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)
                                  or not 1 <= depth <= n_layers):
            raise ValueError(f"effective_depth: must be an integer in 1..{n_layers} (the number "
                             f"of top-down blocks in dec_blocks) or null, got {depth!r}")

    # Derived structure (cheap: the string parsers are cached).
    @property
    def encoder_layers(self) -> tuple[Layer, ...]:
        return parse_layer_string(self.enc_blocks, "encoder", "enc_blocks")

    @property
    def decoder_layers(self) -> tuple[Layer, ...]:
        return parse_layer_string(self.dec_blocks, "decoder", "dec_blocks")

    @property
    def n_top_down(self) -> int:
        """L, the number of top-down (stochastic) blocks."""
        return len(self.decoder_layers)

    def width_at(self, resolution: int) -> int:
        return parse_width_string(self.custom_width_str).get(resolution, self.width)

    def middle_width(self, resolution: int) -> int:
        return int(self.width_at(resolution) * self.bottleneck_multiple)

    @property
    def out_channels(self) -> int:
        """DMOL parameters per pixel: M logits + C × (means, log scales, coefficients) × M."""
        return self.num_mixtures * (1 + 3 * self.image_channels)

    @property
    def bias_resolutions(self) -> tuple[int, ...]:
        """Decoder resolutions that start from a learned bias, ascending (the reference order)."""
        return tuple(sorted({layer.resolution for layer in self.decoder_layers
                             if layer.resolution <= self.no_bias_above}))

    @property
    def groups(self) -> tuple[range, ...]:
        """The G contiguous groups of top-down blocks; the first L mod G groups are one larger."""
        n_layers = self.n_top_down
        n_groups = self.effective_depth or n_layers
        size, extra = divmod(n_layers, n_groups)
        bounds, start = [], 0
        for g in range(n_groups):
            stop = start + size + (1 if g < extra else 0)
            bounds.append(range(start, stop))
            start = stop
        return tuple(bounds)


def encoder_resolutions(config: VDVAEConfig) -> tuple[int, ...]:
    """Resolutions at which the encoder keeps an activation (image size first)."""
    resolutions = [config.image_size]
    for layer in config.encoder_layers:
        res = layer.resolution // (layer.down_rate or 1)
        if res not in resolutions:
            resolutions.append(res)
    return tuple(resolutions)


def _check_encoder(config: VDVAEConfig) -> None:
    current = config.image_size
    for i, layer in enumerate(config.encoder_layers):
        if layer.resolution != current:
            raise ValueError(
                f"enc_blocks: block {i} is at resolution {layer.resolution} but the encoder is "
                f"at {current} there (the chain starts at image_size={config.image_size} and "
                f"changes only at 'RdK' tokens)")
        if layer.down_rate:
            if current % layer.down_rate:
                raise ValueError(f"enc_blocks: '{current}d{layer.down_rate}' pools {current} "
                                 f"by {layer.down_rate}, which does not divide it")
            current //= layer.down_rate


def _check_decoder(config: VDVAEConfig) -> None:
    seen: list[int] = []
    activations = encoder_resolutions(config)
    for i, layer in enumerate(config.decoder_layers):
        res = layer.resolution
        if seen and res < seen[-1]:
            raise ValueError(f"dec_blocks: block {i} at resolution {res} follows one at "
                             f"{seen[-1]}; decoder resolutions must not decrease")
        if res not in activations:
            raise ValueError(f"dec_blocks: resolution {res} has no encoder activation (enc_blocks "
                             f"reaches {', '.join(map(str, activations))})")
        if layer.mixin is not None:
            if layer.mixin not in seen or layer.mixin >= res or res % layer.mixin:
                raise ValueError(f"dec_blocks: '{res}m{layer.mixin}' must mix in an earlier, "
                                 f"lower resolution that divides {res}")
        seen.append(res)
    if seen[-1] != config.image_size:
        raise ValueError(f"dec_blocks: the resolution chain ends at {seen[-1]}, not at "
                         f"image_size={config.image_size}")


def _check_widths(config: VDVAEConfig) -> None:
    resolutions = set(encoder_resolutions(config))
    resolutions |= {layer.resolution for layer in config.decoder_layers}
    for res in sorted(resolutions):
        if config.middle_width(res) < 1:
            raise ValueError(f"bottleneck_multiple: width {config.width_at(res)} at resolution "
                             f"{res} times {config.bottleneck_multiple} leaves no middle channel")
    for layer in config.encoder_layers:
        if layer.down_rate:
            low = layer.resolution // layer.down_rate
            if config.width_at(low) < config.width_at(layer.resolution):
                raise ValueError(f"custom_width_str: width at {low} is smaller than at "
                                 f"{layer.resolution}; the encoder only zero-pads channels")
    for layer in config.decoder_layers:
        if layer.mixin and config.width_at(layer.mixin) < config.width_at(layer.resolution):
            raise ValueError(f"custom_width_str: width at {layer.mixin} is smaller than at "
                             f"{layer.resolution}; '{layer.resolution}m{layer.mixin}' only cuts "
                             f"channels")


# ----------------------------------------------------------------------------- parameter count

def _bottleneck_params(in_w: int, mid: int, out_w: int, use_3x3: bool) -> int:
    k2 = 9 if use_3x3 else 1
    return (in_w * mid + mid) + 2 * (mid * mid * k2 + mid) + (mid * out_w + out_w)


def parameter_count(config: VDVAEConfig) -> int:
    """Exact number of parameters of `VDVAE(config)`, without building it."""
    total = 0
    w_img = config.width_at(config.image_size)
    total += config.image_channels * w_img * 9 + w_img  # encoder.in_conv
    for layer in config.encoder_layers:
        w, mid = config.width_at(layer.resolution), config.middle_width(layer.resolution)
        total += _bottleneck_params(w, mid, w, layer.resolution > 2)
    z = config.zdim
    for layer in config.decoder_layers:
        w, mid = config.width_at(layer.resolution), config.middle_width(layer.resolution)
        use_3x3 = layer.resolution > 2
        total += _bottleneck_params(2 * w, mid, 2 * z, use_3x3)  # posterior
        total += _bottleneck_params(w, mid, 2 * z + w, use_3x3)  # prior + features
        total += z * w + w  # z_proj
        total += _bottleneck_params(w, mid, w, use_3x3)  # resnet
    total += sum(config.width_at(r) * r * r for r in config.bias_resolutions)
    total += 2 * w_img  # gain, bias
    total += w_img * config.out_channels + config.out_channels  # out_conv
    return total


def width_for_param_budget(target_params: int, **config_fields) -> int:
    """The `width` whose parameter count is closest to `target_params` (ties: the smaller width),
    all other fields (layer strings, custom widths, ...) as given. For width-matched comparisons.
    """
    if target_params < 1:
        raise ValueError(f"target_params: must be positive, got {target_params}")
    config_fields.pop("width", None)

    def count(width: int) -> int | None:
        try:
            return parameter_count(VDVAEConfig(width=width, **config_fields))
        except ValueError:
            return None  # e.g. a width too small for the bottleneck

    low = 1
    while count(low) is None:
        low += 1
        if low > 64:
            # Surface the real reason (a bad field other than width).
            VDVAEConfig(width=low, **config_fields)
    high = max(low, 2)
    # The count grows monotonically with the width; a width that makes the config invalid
    # (e.g. wider than a custom width it must mix into) is treated as too large.
    while (c := count(high)) is not None and c < target_params and high < 2 ** 16:
        low, high = high, high * 2
    while high - low > 1:  # invariant: count(low) < target <= count(high), or low is minimal
        mid = (low + high) // 2
        if count(mid) is not None and count(mid) < target_params:
            low = mid
        else:
            high = mid
    candidates = [w for w in (low, high) if count(w) is not None]
    return min(candidates, key=lambda w: (abs(count(w) - target_params), w))
