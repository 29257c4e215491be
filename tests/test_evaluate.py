"""Evaluation rows: every test image, CI, VAE terms, active units, IW bound, costs, samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import (TINY_AUTOREGRESSIVE, TINY_VAE, TinyAutoregressive, TinyConfig, TinyVAE,
                         realish_images)

from harness.errors import UserError
from harness.engine.config import EvalConfig
from harness.engine.artifacts import image_grid
from harness.engine.evaluate import evaluate
from harness.engine.sampling import sampling_speed_rows
from models.likelihoods import nats_to_bits

FAST = dict(batch_size=5, sample_batch_size=4, sample_repeats=2, sample_warmup=1,
            n_grid_samples=6)


def _rows(rows, metric, **context):
    return [r for r in rows if r["metric"] == metric
            and all(r.get(k) == v for k, v in context.items())]


def _one(rows, metric, **context):
    found = _rows(rows, metric, **context)
    assert len(found) == 1, (metric, context, found)
    return found[0]["value"]


def test_every_test_image_is_scored_when_n_is_not_a_batch_multiple(tmp_path):
    torch.manual_seed(0)
    model = TinyAutoregressive(TinyConfig(noise_std=0.0)).eval()
    images = realish_images(23)
    rows = evaluate({"raw": model}, TINY_AUTOREGRESSIVE, images,
                    EvalConfig(weights=("raw",), **FAST), tmp_path)
    per_image = np.load(tmp_path / "per_image_test_bits_per_dim_raw.npy")
    assert per_image.dtype == np.float64 and per_image.shape == (23,)
    with torch.no_grad():
        direct = nats_to_bits(model.loss(images)["loss_nats_per_dim"]).double().numpy()
    np.testing.assert_allclose(per_image, direct, rtol=1e-6)
    assert _one(rows, "test_bits_per_dim", weights="raw", split="test") == \
        pytest.approx(per_image.mean())
    assert _one(rows, "test_bits_per_dim_ci95", weights="raw") == \
        pytest.approx(1.96 * per_image.std(ddof=1) / math.sqrt(23))
    assert _rows(rows, "test_bits_per_dim")[0]["n_images"] == 23


def test_autoregressive_rows_costs_and_samples(tmp_path):
    torch.manual_seed(0)
    raw, ema = TinyAutoregressive().eval(), TinyAutoregressive().eval()
    rows = evaluate({"raw": raw, "ema": ema}, TINY_AUTOREGRESSIVE, realish_images(12),
                    EvalConfig(**FAST), tmp_path)
    assert {r["weights"] for r in _rows(rows, "test_bits_per_dim")} == {"raw", "ema"}
    assert _one(rows, "params") == sum(p.numel() for p in raw.parameters())
    # Conv 1->8 3x3 and 8->256 1x1 on 8x8: 2·MACs per image.
    assert _one(rows, "flops_per_image") == 2 * 64 * (1 * 8 * 9 + 8 * 256)
    assert not _rows(rows, "sample_images_per_s")  # timed by the runner's speed phase
    speed = sampling_speed_rows(ema, TINY_AUTOREGRESSIVE, EvalConfig(**FAST), image_size=8)
    assert sorted(r["method"] for r in speed) == ["cached", "naive"]
    assert all(r["value"] > 0 and r["batch_size"] == 4 and r["image_size"] == 8 for r in speed)
    for row in speed:
        assert row["min_images_per_s"] <= row["value"] <= row["max_images_per_s"]
        assert row["spread_fraction"] == pytest.approx(
            (row["max_images_per_s"] - row["min_images_per_s"]) / row["value"])
        assert 1 <= row["rounds"] <= EvalConfig().sample_max_rounds and row["repeats"] == 2
    assert not _rows(rows, "iw_bits_per_dim") and not _rows(rows, "active_units")
    for name in ("raw", "ema"):
        assert (tmp_path / f"per_image_test_bits_per_dim_{name}.npy").exists()
    grid = Image.open(tmp_path / "samples.png")
    assert grid.size == (3 * 10 + 2, 2 * 10 + 2) and grid.mode == "L"


def test_vae_terms_active_units_and_iw_bound(tmp_path):
    torch.manual_seed(0)
    model = TinyVAE().eval()
    with torch.no_grad():  # layer 1's posterior ignores the image: no active units there
        model.posteriors[0].weight.mul_(100.0)
        model.posteriors[1].weight.zero_()
    images = realish_images(17)
    config = EvalConfig(weights=("ema",), iw_k=4, iw_max_images=7, iw_chunk_size=3, **FAST)
    rows = evaluate({"ema": model}, TINY_VAE, images, config, tmp_path)
    total = _one(rows, "test_bits_per_dim", weights="ema")
    distortion = _one(rows, "distortion_bits_per_dim", weights="ema")
    rate = _one(rows, "rate_bits_per_dim", weights="ema")
    kl = [r["value"] for r in sorted(_rows(rows, "kl_bits_per_dim"), key=lambda r: r["layer"])]
    assert len(kl) == 2 and total == pytest.approx(distortion + rate)
    assert not _rows(rows, "elbo_bits_per_dim")  # the objective is not repeated
    assert sum(kl) == pytest.approx(rate)
    active = sorted((r for r in _rows(rows, "active_units") if "layer" in r),
                    key=lambda r: r["layer"])
    with torch.no_grad():  # the definition, computed directly on all images at once
        expected = [int((m.double().var(dim=0, unbiased=False) > 0.01).sum())
                    for m in model.loss(images, posterior_means=True)["posterior_means"]]
    assert expected[0] > 0 and expected[1] == 0
    assert [(r["value"], r["units"]) for r in active] == [(expected[0], 2), (0, 8)]
    assert [r["value"] for r in _rows(rows, "active_units") if "layer" not in r] == [expected[0]]
    assert {r["n_images"] for r in _rows(rows, "active_units")} == {17}
    iw = _rows(rows, "iw_bits_per_dim")
    assert len(iw) == 1 and iw[0]["k"] == 4 and iw[0]["n_images"] == 7
    assert np.load(tmp_path / "per_image_iw_bits_per_dim_ema.npy").shape == (7,)
    speed = sampling_speed_rows(model, TINY_VAE, config, image_size=8)
    assert [(r["method"], r["temperature"]) for r in speed] == [("ancestral", 1.0)]
    assert (tmp_path / "samples.png").exists()


class _CountingVAE(TinyVAE):
    """TinyVAE recording every loss call and the posterior means each one handed out."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, bool]] = []  # (batch size, posterior_means asked)
        self.means: list[list[torch.Tensor]] = []

    def loss(self, images, posterior_means=False):
        self.calls.append((images.shape[0], posterior_means))
        out = super().loss(images, posterior_means=posterior_means)
        if posterior_means:
            self.means.append([m.clone() for m in out["posterior_means"]])
        return out


def test_active_units_come_from_the_elbo_pass_itself(tmp_path):
    """One pass over the test images: the batches holding the first n_au images also hand out
    their posterior means, and the counts are those of exactly those means."""
    torch.manual_seed(0)
    model = _CountingVAE().eval()
    with torch.no_grad():
        model.posteriors[0].weight.mul_(30.0)
    config = EvalConfig(weights=("raw",), batch_size=5, flops=False, n_grid_samples=0,
                        sample_repeats=1, sample_warmup=0, active_units_max_images=7,
                        active_unit_threshold=0.05)
    rows = evaluate({"raw": model}, TINY_VAE, realish_images(13), config, tmp_path)
    # 13 images in batches of 5: one pass of 3 calls; the first two hold images 0..6.
    assert model.calls == [(5, True), (5, True), (3, False)]
    collected = [torch.cat([batch[layer] for batch in model.means])[:7].double()
                 for layer in range(2)]
    variances = [m.var(dim=0, unbiased=False) for m in collected]
    expected = [int((v > 0.05).sum()) for v in variances]
    assert expected[0] > 0  # not a trivial all-zero case
    per_layer = sorted((r for r in _rows(rows, "active_units") if "layer" in r),
                       key=lambda r: r["layer"])
    assert [(r["value"], r["units"]) for r in per_layer] == [(expected[0], 2), (expected[1], 8)]
    total = [r for r in _rows(rows, "active_units") if "layer" not in r]
    assert [(r["value"], r["units"]) for r in total] == [(sum(expected), 10)]
    assert {(r["n_images"], r["threshold"]) for r in _rows(rows, "active_units")} == {(7, 0.05)}


def test_latent_moments_match_the_population_variance_of_the_first_images():
    from harness.engine.passes import LatentMoments

    generator = torch.Generator().manual_seed(3)
    means = [torch.randn(11, 2, 3, 3, generator=generator) * torch.rand(2, 3, 3,
                                                                          generator=generator)]
    moments = LatentMoments(n_images=8)
    for first in range(0, 11, 3):  # batches 0-2, 3-5, 6-8 (cut to 6-7), 9-10 (ignored)
        assert moments.wants(first) == (first < 8)
        moments.add(first, [m[first:first + 3] for m in means])
    direct = means[0][:8].double().var(dim=0, unbiased=False)
    torch.testing.assert_close(moments.variances()[0], direct, rtol=1e-12, atol=1e-12)
    threshold = float(direct.median())
    assert moments.active_units(threshold) == [(int((direct > threshold).sum()), 18)]


def test_common_random_numbers_and_caller_rng_untouched(tmp_path):
    torch.manual_seed(0)
    model = TinyVAE().eval()
    images = realish_images(11)
    config = EvalConfig(weights=("raw",), flops=False, n_grid_samples=0, sample_repeats=1,
                        sample_warmup=0, batch_size=4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    evaluate({"raw": model}, TINY_VAE, images, config, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), before)
    evaluate({"raw": model}, TINY_VAE, images, config, tmp_path / "b")
    first = np.load(tmp_path / "a" / "per_image_test_bits_per_dim_raw.npy")
    second = np.load(tmp_path / "b" / "per_image_test_bits_per_dim_raw.npy")
    assert np.array_equal(first, second)
    evaluate({"raw": model}, TINY_VAE, images, EvalConfig(**{**config.__dict__, "noise_seed": 1}),
             tmp_path / "c")
    third = np.load(tmp_path / "c" / "per_image_test_bits_per_dim_raw.npy")
    assert not np.array_equal(first, third)


def test_missing_weights_and_bad_config():
    with pytest.raises(UserError, match="eval.weights"):
        evaluate({"raw": TinyVAE()}, TINY_VAE, realish_images(3), EvalConfig(), "unused")
    with pytest.raises(ValueError, match=r"eval\.batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"eval\.weights"):
        EvalConfig(weights="raw")
    with pytest.raises(ValueError, match=r"eval\.active_units_max_images"):
        EvalConfig(active_units_max_images=0)
    assert EvalConfig(weights=["ema"]).weights == ("ema",)


def test_image_grid_layout():
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).view(5, 3, 2, 2)
    grid = image_grid(images, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert np.array_equal(grid[1:3, 4:6], images[1].permute(1, 2, 0).numpy())
    assert (grid[4:6, 7:9] == 255).all()  # the sixth cell is empty


class _SleepySampler(torch.nn.Module):
    """sample() takes 50 ms on the warm-up call, then 20, 40, 30 ms."""

    def __init__(self):
        super().__init__()
        self.delays = [0.05, 0.02, 0.04, 0.03]

    def sample(self, n, generator=None):
        import time

        time.sleep(self.delays.pop(0))
        return torch.zeros(n, 1, 2, 2, dtype=torch.uint8)


def test_sampling_throughput_is_the_median_after_warmup():
    from harness.engine.throughput import peak_memory_bytes, sampling_speed

    rate = sampling_speed(_SleepySampler(), batch_size=6, repeats=1, warmup=1, window=3,
                          tolerance=float("inf"), max_rounds=3).images_per_s
    assert rate == pytest.approx(6 / 0.03, rel=0.25)
    assert peak_memory_bytes("cpu") > 10_000_000  # a Python process with torch loaded


def _fake_rounds(rates):
    """A round timer returning the given images/s figures in turn, and a clock that advances
    one second per round."""
    calls = []

    def time_round():
        calls.append(len(calls))
        return rates[len(calls) - 1]

    return time_round, calls, lambda: float(len(calls))


def test_spread_rule_stops_as_soon_as_the_last_rounds_agree():
    from harness.engine.throughput import measure_until_settled

    # Rounds 1-2 disagree with the rest (a neighbour still busy); 3-5 agree within 2%.
    time_round, calls, clock = _fake_rounds([30.0, 95.0, 100.0, 101.0, 99.5, 100.0, 100.0])
    result = measure_until_settled(time_round, window=3, tolerance=0.05, max_rounds=10,
                                   max_s=1e9, clock=clock)
    assert len(calls) == 5 and result.rounds == 5 and result.settled
    assert result.images_per_s == 100.0  # the median of 100, 101, 99.5
    assert (result.min_images_per_s, result.max_images_per_s) == (99.5, 101.0)
    assert result.spread_fraction == pytest.approx(1.5 / 100.0)


def test_spread_rule_stops_at_the_round_or_time_cap_and_says_it_did_not_settle():
    from harness.engine.throughput import measure_until_settled, rounds_settled

    swinging = [27.0, 95.0, 40.0, 90.0, 30.0, 80.0, 50.0, 99.0]
    time_round, calls, clock = _fake_rounds(swinging)
    capped = measure_until_settled(time_round, window=3, tolerance=0.05, max_rounds=6,
                                   max_s=1e9, clock=clock)
    assert len(calls) == 6 and not capped.settled
    assert capped.min_images_per_s <= capped.images_per_s <= capped.max_images_per_s
    assert capped.spread_fraction == pytest.approx((90 - 30) / 80)  # rounds 4-6
    time_round, calls, clock = _fake_rounds(swinging)
    timed_out = measure_until_settled(time_round, window=3, tolerance=0.05, max_rounds=8,
                                      max_s=2.0, clock=clock)  # one second per round
    assert len(calls) == 2 and timed_out.rounds == 2 and not timed_out.settled
    assert not rounds_settled([100.0, 100.0], window=3, tolerance=0.5)  # too few rounds


class _BiasAsInput(torch.nn.Module):
    """A parameter handed to a submodule as its input (as VDVAE's learned top-down bias is)."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1, 2, 4, 4))
        self.conv = torch.nn.Conv2d(2, 2, 1)

    def loss(self, images):
        out = self.conv(self.bias).mean() + images.float().mean(dim=(1, 2, 3))
        return {"loss_nats_per_dim": out}


def test_flops_count_works_inside_inference_mode_with_trainable_parameters():
    from harness.engine.throughput import flops_per_image

    model = _BiasAsInput()  # built outside inference mode, as evaluate's models are
    with torch.inference_mode():  # evaluate() runs everything inside inference mode
        flops = flops_per_image(model, torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    assert flops == 2 * 16 * 2 * 2 / 2  # one 1x1 conv on a batch-free bias, shared by 2 images


def test_default_batch_size_is_chosen_by_device_and_active_units_can_be_bounded(tmp_path):
    config = EvalConfig(weights=("raw",), flops=False, n_grid_samples=0, sample_repeats=1,
                        sample_warmup=0, active_units_max_images=5)
    rows = evaluate({"raw": TinyVAE().eval()}, TINY_VAE, realish_images(9), config, tmp_path)
    assert _rows(rows, "eval_images_per_s")[0]["batch_size"] == 32  # CPU
    assert {r["n_images"] for r in _rows(rows, "active_units")} == {5}
    assert _rows(rows, "test_bits_per_dim")[0]["n_images"] == 9
