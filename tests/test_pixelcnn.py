"""Gated PixelCNN model: causality by gradient (no channel leak, no blind spot), exact uniform
likelihood, parameter counts from the layer formula, the parameter-budget helper, config errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models import coding, registry
from models.likelihoods import nats_to_bits
from models.pixelcnn import (PRESETS, GatedPixelCNN, GatedPixelCNNConfig,
                             channels_for_param_budget, parameter_count)


def perturbed(config: GatedPixelCNNConfig) -> GatedPixelCNN:
    """float64 model with every parameter moved away from its initial value, so that no
    gradient is zero by accident (e.g. a zero bias or a symmetric init)."""
    model = GatedPixelCNN(config).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator,
                                              dtype=parameter.dtype))
        # The head's two ReLUs are the only places where a dependence can vanish for a given
        # input: push their inputs positive (checked by `assert_head_relus_active`).
        for layer in model.layers:
            layer.skip.bias.add_(2.0)
        model.head.hidden.weight.mul_(0.1)
        model.head.hidden.bias.add_(2.0)
    return model


def assert_head_relus_active(model: GatedPixelCNN, x: torch.Tensor) -> None:
    skips = model.features(x)
    assert torch.all(skips > 0)
    assert torch.all(model.head.hidden(skips.relu()) > 0)


def expected_dependencies(channels: int, size: int, c: int, i: int, j: int, reach: int,
                          same_pixel: bool) -> torch.Tensor:
    """(C, H, W) bool: the inputs that output sub-pixel (c, i, j) must depend on.

    Derived from the layer rules: the vertical stack of the last of L layers covers the rows
    i-1-R .. i-1 and columns j-R .. j+R, R = ⌊k_first/2⌋ + (L-1)·⌊k/2⌋ (each layer adds ⌊k/2⌋
    rows and columns, the first layer reads one row higher); the horizontal stack covers
    columns j-R .. j-1 of row i; inside pixel (i, j) only channels < c (none with DMOL, which
    predicts the whole pixel from earlier pixels)."""
    expected = torch.zeros(channels, size, size, dtype=torch.bool)
    expected[:, max(i - 1 - reach, 0):i, max(j - reach, 0):j + reach + 1] = True
    expected[:, i, max(j - reach, 0):j] = True
    if same_pixel:
        expected[:c, i, j] = True
    return expected


BATCH = 4
CAUSALITY_POSITIONS = [(0, 0), (0, 3), (0, 7), (1, 7), (4, 0), (4, 3), (5, 6), (7, 0), (7, 7)]


@pytest.mark.parametrize("channels,output", [(1, "softmax"), (3, "softmax"), (3, "dmol")])
def test_gradient_causality_no_leak_and_no_blind_spot(channels, output):
    # k_first = k = 3 and 2 layers: R = 2, so the vertical stack reaches (i-1, j+2), where
    # stacked masked 3×3 convolutions have their blind spot; an 8×8 image keeps some positions
    # outside the receptive field, so its boundary is checked too.
    size, reach = 8, 2
    config = GatedPixelCNNConfig(image_size=size, image_channels=channels, n_layers=2,
                                 channels=6, kernel_size=3, first_kernel_size=3, head_channels=6,
                                 output=output, num_mixtures=2)
    model = perturbed(config)
    # Both properties are checked for each input of a small batch.
    x = torch.randn(BATCH, channels, size, size, dtype=torch.float64, requires_grad=True)
    assert_head_relus_active(model, x)
    out = model(x)
    softmax = output == "softmax"
    # softmax: (1, C, 256, H, W), one output group per sub-pixel; dmol: (1, P, H, W), one per pixel.
    heads = range(channels) if softmax else [None]
    projection = torch.randn(out.shape[2] if softmax else out.shape[1], dtype=torch.float64)
    for i, j in CAUSALITY_POSITIONS:
        for c in heads:
            value = out[:, c, :, i, j] if softmax else out[:, :, i, j]  # (BATCH, 256 or P)
            (grad,) = torch.autograd.grad((value @ projection).sum(), x, retain_graph=True)
            depends = (grad != 0).all(dim=0)  # (C, H, W): for every input of the batch
            expected = expected_dependencies(channels, size, c or 0, i, j, reach, softmax)
            where = f"output (c={c}, i={i}, j={j})"
            assert torch.all(grad[:, ~expected] == 0), f"{where} depends on a later input"
            assert torch.all(depends[expected]), f"{where} misses part of its receptive field"
            # The blind spot of a single masked stack, named explicitly.
            for dj in (1, 2):
                if i >= 1 and j + dj < size:
                    assert torch.all(depends[:, i - 1, j + dj]), (where, "blind spot", dj)


def test_first_and_last_layer_masks_on_a_deeper_model():
    # A wider kernel and more layers than above: R = 2 + 2·1 = 4 on a 7×7 RGB image.
    config = GatedPixelCNNConfig(image_size=7, image_channels=3, n_layers=3, channels=6,
                                 kernel_size=3, first_kernel_size=5, head_channels=9)
    model = perturbed(config)
    x = torch.randn(BATCH, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    assert_head_relus_active(model, x)
    out = model(x)
    projection = torch.randn(256, dtype=torch.float64)
    for i, j in [(3, 3), (6, 6), (0, 6)]:
        for c in range(3):
            (grad,) = torch.autograd.grad((out[:, c, :, i, j] @ projection).sum(), x,
                                          retain_graph=True)
            expected = expected_dependencies(3, 7, c, i, j, 4, same_pixel=True)
            assert torch.equal((grad != 0).all(dim=0), expected), (c, i, j)


@pytest.mark.parametrize("channels", [1, 3])
def test_zero_output_weights_give_exactly_8_bits_per_dim(channels):
    config = GatedPixelCNNConfig(image_size=6, image_channels=channels, n_layers=2, channels=6,
                                 kernel_size=3, first_kernel_size=3)
    model = GatedPixelCNN(config)
    with torch.no_grad():
        model.head.out.weight.zero_()
        model.head.out.bias.zero_()
    images = torch.randint(0, 256, (3, channels, 6, 6), dtype=torch.uint8)
    bits = nats_to_bits(model.nll(images))
    assert bits.shape == (3,)
    assert torch.all(bits == 8.0), bits
    loss = model.loss(images)
    assert set(loss) == {"loss_nats_per_dim"}
    assert torch.equal(loss["loss_nats_per_dim"], model.nll(images))


def test_nll_is_the_sum_of_per_subpixel_log_probabilities():
    config = GatedPixelCNNConfig(**PRESETS["tiny"])
    model = perturbed(config)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    logits = model(images.double() / 127.5 - 1)  # (N, C, 256, H, W)
    log_probs = torch.log_softmax(logits, dim=2).gather(2, images.long()[:, :, None])
    expected = -log_probs.reshape(2, -1).sum(1) / (3 * 8 * 8)
    torch.testing.assert_close(model.nll(images).double(), expected, rtol=1e-6, atol=0)


def test_dmol_nll_is_a_distribution_over_the_pixel():
    # A 1×1 grey image has one dimension, so nats/dim = -log p(x): the 256 values must sum to 1
    # (up to the likelihood's density fallback for bins with mass below 1e-5).
    config = GatedPixelCNNConfig(image_size=1, image_channels=1, n_layers=1, channels=4,
                                 kernel_size=3, first_kernel_size=3, output="dmol",
                                 num_mixtures=3)
    model = perturbed(config)
    images = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    total = torch.exp(-model.nll(images)).sum()  # one dimension: nats/dim = -log p(x)
    torch.testing.assert_close(total.double(), torch.tensor(1.0, dtype=torch.float64),
                               rtol=0, atol=1e-4)


def layer_parameters(c_in: int, p: int, k: int, has_residual: bool) -> int:
    """One gated layer, written out from the architecture:
    vertical (⌊k/2⌋+1)×k conv c_in → 2p with bias, horizontal 1×(⌊k/2⌋+1) conv c_in → 2p with
    bias, vertical → horizontal 1×1 2p → 2p without bias, skip 1×1 p → p with bias, and a
    residual 1×1 p → p with bias in every layer but the last (its output would be unused)."""
    rows = k // 2 + 1
    vertical = c_in * 2 * p * rows * k + 2 * p
    horizontal = c_in * 2 * p * rows + 2 * p
    link = (2 * p) ** 2
    skip = p * p + p
    residual = p * p + p if has_residual else 0
    return vertical + horizontal + link + skip + residual


def expected_parameters(fields: dict) -> int:
    config = GatedPixelCNNConfig(**fields)
    p, layers = config.channels, config.n_layers
    total = layer_parameters(config.image_channels, p, config.first_kernel_size, layers > 1)
    for index in range(1, layers):
        total += layer_parameters(p, p, config.kernel_size, index < layers - 1)
    hidden = config.head_channels or p
    outputs = (256 * config.image_channels if config.output == "softmax"
               else config.num_mixtures * (1 + 3 * config.image_channels))
    return total + (p * hidden + hidden) + (hidden * outputs + outputs)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_match_the_layer_formula(name):
    with torch.device("meta"):  # no memory for the 119M-parameter ImageNet model
        model = GatedPixelCNN(GatedPixelCNNConfig(**PRESETS[name]))
    counted = registry.count_parameters(model)
    assert counted == expected_parameters(PRESETS[name])
    assert counted == parameter_count(model.config)


def test_imagenet_parameter_count_by_hand():
    # p = 384, 5×5, 20 layers, RGB, head width 384, 768 logits:
    # later layer: 384·768·15+768 + 384·768·3+768 + 768² + 2·(384²+384) = 6,195,456
    # first layer: 3·768·15+768 + 3·768·3+768 + 768² + 2·(384²+384) = 928,512
    # last layer: 6,195,456 - (384²+384) = 6,047,616 (no residual)
    # head: 384·384+384 + 384·768+768 = 443,520
    expected = 928_512 + 18 * 6_195_456 + 6_047_616 + 443_520
    assert expected == 118_937_856
    assert parameter_count(GatedPixelCNNConfig(**PRESETS["imagenet32"])) == expected


def test_extra_config_combinations_count_like_the_formula():
    for fields in [dict(image_size=5, image_channels=1, n_layers=1, channels=5, kernel_size=3,
                        first_kernel_size=7),
                   dict(image_size=5, image_channels=3, n_layers=3, channels=9, kernel_size=5,
                        first_kernel_size=3, head_channels=12),
                   dict(image_size=5, image_channels=3, n_layers=2, channels=8, kernel_size=3,
                        first_kernel_size=3, output="dmol", num_mixtures=4)]:
        model = GatedPixelCNN(GatedPixelCNNConfig(**fields))
        assert registry.count_parameters(model) == expected_parameters(fields), fields


@pytest.mark.parametrize("target,fields", [
    (402_735, dict(image_size=28, image_channels=1, n_layers=8, kernel_size=3,
                   first_kernel_size=5)),
    (402_735, dict(image_size=28, image_channels=1, n_layers=8, kernel_size=3,
                   first_kernel_size=5, output="dmol", num_mixtures=5)),
    (2_000_000, dict(image_size=32, image_channels=3, n_layers=10, kernel_size=3,
                     first_kernel_size=7, head_channels=96)),
])
def test_channels_for_param_budget_lands_close(target, fields):
    p = channels_for_param_budget(target, **fields)
    config = GatedPixelCNNConfig(channels=p, **fields)  # valid: divisible by 3 where needed
    step = config.masking_groups
    count = parameter_count(config)
    assert abs(count - target) / target < 0.02, (p, count)
    # No neighbouring width is closer.
    for other in (p - step, p + step):
        other_count = parameter_count(dataclasses.replace(config, channels=other))
        assert abs(count - target) <= abs(other_count - target)


def test_channels_for_param_budget_refuses_a_fixed_width():
    with pytest.raises(ValueError, match="chooses `channels`"):
        channels_for_param_budget(1000, image_size=8, image_channels=1, channels=4)


@pytest.mark.parametrize("fields,field", [
    (dict(image_channels=3, channels=64), "channels"),
    (dict(image_channels=3, channels=63, head_channels=100), "head_channels"),
    (dict(kernel_size=4), "kernel_size"),
    (dict(first_kernel_size=6), "first_kernel_size"),
    (dict(image_channels=2), "image_channels"),
    (dict(output="logistic"), "output"),
    (dict(n_layers=0), "n_layers"),
    (dict(num_mixtures=0), "num_mixtures"),
    (dict(image_size=-1), "image_size"),
])
def test_impossible_configs_name_the_field(fields, field):
    base = dict(image_size=8, image_channels=1, channels=12)
    base.update(fields)
    with pytest.raises(ValueError, match=rf"GatedPixelCNNConfig\.{field}="):
        GatedPixelCNNConfig(**base)


def test_dmol_needs_no_channel_groups():
    # DMOL predicts the whole pixel from earlier pixels: any width works for RGB.
    config = GatedPixelCNNConfig(image_size=4, image_channels=3, channels=64, output="dmol")
    assert config.masking_groups == 1
    assert config.output_channels == 10 * 10


def test_registered_with_presets_and_interface():
    family = registry.get("pixelcnn")
    config_cls, model_cls = family.config_cls, family.model_cls
    assert (config_cls, model_cls) == (GatedPixelCNNConfig, GatedPixelCNN)
    assert set(family.presets) >= {"imagenet32", "cifar10", "cpu_mnist", "cpu_cifar", "tiny"}
    assert family.autoregressive and [s.method for s in family.samplers] == ["naive", "cached"]
    # exact likelihood: no IW bound, no latents; its sub-pixel tables drive a range coder
    assert family.capabilities == {coding.STEPWISE_PROBABILITIES}
    assert family.image_shape(config_cls(**PRESETS["cpu_mnist"])) == (1, 28, 28)
    model = model_cls(config_cls(**PRESETS["cpu_mnist"]))
    assert model.image_shape == (1, 28, 28)
    assert dataclasses.is_dataclass(model.config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.channels = 3  # type: ignore[misc]
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    loss = model.loss(images)["loss_nats_per_dim"]
    assert loss.shape == (2,) and torch.all(torch.isfinite(loss))
    # Untrained: close to uniform, 8 bits/dim = ln 256 nats/dim.
    assert torch.all((loss - math.log(256)).abs() < 0.5)
