"""Training and evaluation with the real model families (small presets, real-ish images)."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from tiny_models import realish_images

from harness import atomic
from harness.engine.config import EvalConfig, TrainConfig
from harness.engine.evaluate import evaluate
from harness.engine.sampling import sampling_speed_rows
from harness.engine.train import train
from models import registry


def _build(family: str, preset: str):
    torch.manual_seed(0)
    return registry.build_model(family, preset=preset)


@pytest.mark.parametrize("family, preset, lr", [("vdvae", "fmnist_tiny", 3e-3),
                                                ("pixelcnn", "cpu_mnist", 1e-2)])
def test_loss_decreases_on_a_fixed_real_batch(tmp_path, family, preset, lr):
    model = _build(family, preset)
    images = realish_images(8, size=28, seed=5)  # batch = data: the same 8 images every step
    config = TrainConfig(batch_size=8, lr=lr, warmup_steps=5, max_steps=20, log_every_steps=1,
                         checkpoint_every_steps=0, device="cpu", progress="off", seed=0)
    result = train(model, images, config, tmp_path)
    rows = [r for r in atomic.read_jsonl(tmp_path / "train_log.jsonl") if r["type"] == "train"]
    assert len(rows) == 20 and result.skipped_updates == 0
    first, last = rows[0]["loss_bits_per_dim"], rows[-1]["loss_bits_per_dim"]
    assert last < first - 0.3, (first, last)
    assert (tmp_path / "checkpoints" / "step-20.pt").exists()


def test_vdvae_evaluation_rows(tmp_path):
    model = _build("vdvae", "fmnist_tiny").eval()
    images = realish_images(13, size=28, seed=9)
    config = EvalConfig(batch_size=5, weights=("raw",), iw_k=3, iw_max_images=4, iw_chunk_size=2,
                        sample_batch_size=2, sample_repeats=1, sample_warmup=0, n_grid_samples=4)
    rows = evaluate({"raw": model}, registry.get("vdvae"), images, config, tmp_path)
    value = {r["metric"]: r["value"] for r in rows if "layer" not in r}
    assert value["test_bits_per_dim"] == pytest.approx(
        value["distortion_bits_per_dim"] + value["rate_bits_per_dim"])
    kl = [r for r in rows if r["metric"] == "kl_bits_per_dim"]
    assert len(kl) == model.config.n_top_down
    assert sum(r["value"] for r in kl) == pytest.approx(value["rate_bits_per_dim"], rel=1e-6)
    per_layer = [r for r in rows if r["metric"] == "active_units" and "layer" in r]
    assert len(per_layer) == model.config.n_top_down
    assert value["active_units"] == sum(r["value"] for r in per_layer)
    assert value["iw_bits_per_dim"] > 0 and value["params"] > 0 and value["flops_per_image"] > 0
    assert not [r for r in rows if r["metric"] == "sample_images_per_s"]  # the speed phase's
    speed = sampling_speed_rows(model, registry.get("vdvae"), config, image_size=28)
    assert [(r["method"], r["temperature"], r["image_size"]) for r in speed] == \
        [("ancestral", 1.0, 28)]
    assert speed[0]["min_images_per_s"] <= speed[0]["value"] <= speed[0]["max_images_per_s"]
    assert math.isfinite(value["test_bits_per_dim_ci95"])


def test_pixelcnn_evaluation_rows(tmp_path):
    model = _build("pixelcnn", "tiny").eval()  # 8x8 RGB: the naive sampler stays cheap
    images = realish_images(7, channels=3, size=8, seed=2)
    config = EvalConfig(batch_size=3, weights=("ema",), iw_k=8, sample_batch_size=2,
                        sample_repeats=2, sample_warmup=1, n_grid_samples=4)
    rows = evaluate({"ema": model}, registry.get("pixelcnn"), images, config, tmp_path)
    metrics = {r["metric"] for r in rows}
    assert "iw_bits_per_dim" not in metrics and "active_units" not in metrics  # exact likelihood
    speed = sampling_speed_rows(model, registry.get("pixelcnn"), config, image_size=8)
    assert {r["method"] for r in speed} == {"naive", "cached"}
    assert Image.open(tmp_path / "samples.png").mode == "RGB"
