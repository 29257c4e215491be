"""The lossless-codec studies inside an evaluation: rows for the families whose capabilities a
codec uses, nothing (and a recorded skip) when eval.codec_images is 0."""

from __future__ import annotations

import dataclasses
import json

import torch

from harness.engine.config import EvalConfig
from harness.engine.evaluate import evaluate
from models import coding, registry

CONFIG = EvalConfig(batch_size=4, weights=("raw",), n_grid_samples=0, flops=False,
                    sample_methods=("cached",), codec_images=3, codec_batch_size=2)


def test_codec_rows_for_each_family(tmp_path):
    vdvae = registry.get("vdvae")
    if not vdvae.can(coding.TOP_DOWN_LATENTS):  # until models/vdvae.py declares it
        vdvae = dataclasses.replace(vdvae, capabilities=vdvae.capabilities
                                    | {coding.TOP_DOWN_LATENTS})
    for family, preset, study in ((registry.get("pixelcnn"), "tiny", "lossless_range"),
                                  (vdvae, "fmnist_tiny", "lossless_bits_back")):
        torch.manual_seed(0)
        model = family.build_model(family.build_config(preset))
        images = torch.randint(0, 256, (5, *family.image_shape(model.config)), dtype=torch.uint8)
        out = tmp_path / family.name
        rows = evaluate({"raw": model}, family, images, CONFIG, out)
        codec = {r["metric"]: r for r in rows if r["metric"].startswith("codec_")}
        assert codec["codec_roundtrip_exact"]["value"] == 1.0
        assert codec["codec_bits_per_dim"]["n_images"] == 3
        assert codec["codec_bits_per_dim"]["split"] == "test"
        assert json.loads((out / "studies.json").read_text())[study]["status"] == "done"


def test_codec_studies_are_off_at_zero_images(tmp_path):
    family = registry.get("pixelcnn")
    model = family.build_model(family.build_config("tiny"))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    config = dataclasses.replace(CONFIG, codec_images=0)
    rows = evaluate({"raw": model}, family, images, config, tmp_path)
    assert not [r for r in rows if r["metric"].startswith("codec_")]
    record = json.loads((tmp_path / "studies.json").read_text())
    assert record["lossless_range"] == {"status": "skipped",
                                        "reason": "turned off in the eval config"}
    assert record["lossless_bits_back"]["status"] == "skipped"
