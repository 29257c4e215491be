"""Weights files (harness.engine.weights): the reference's two layouts and the harness's own
checkpoints load to the same model; a misfit names its key and preset; unsafe or broken files
are refused with one line and nothing in them runs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TINY_CONV, TinyConfig, TinyConvModel, realish_images
from train_worker import run as train_tiny

from harness.engine import weights
from harness.engine.config import TrainConfig
from harness.engine.evaluate import likelihood_pass
from harness.engine.train import train
from harness.errors import UserError
from models import registry
from models.vdvae import PRESETS, VDVAE, VDVAEConfig

VDVAE_FAMILY = registry.get("vdvae")


def _tiny_vdvae(seed: int = 0, **overrides) -> VDVAE:
    torch.manual_seed(seed)
    model = VDVAE(VDVAEConfig(**{**PRESETS["cifar10_tiny"], **overrides}))
    with torch.no_grad():  # off the zero init, so every tensor matters
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def _save_reference_layouts(model: torch.nn.Module, folder: Path) -> tuple[Path, Path]:
    """The reference's `-model-ema.th` (plain) and `-model.th` (saved inside DDP) files."""
    ema, ddp = folder / "x-iter-7-model-ema.th", folder / "x-iter-7-model.th"
    torch.save(model.state_dict(), ema)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, ddp)
    return ema, ddp


def test_reference_layouts_evaluate_equal_to_the_model_in_memory(tmp_path):
    source = _tiny_vdvae(seed=3)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    expected, _ = likelihood_pass(source, images, batch_size=2, noise_seed=11)
    for path, layout in zip(_save_reference_layouts(source, tmp_path),
                            ("reference-ema", "reference-ddp")):
        weights_file = weights.read_weights_file(path)
        assert weights_file.layout == layout
        assert set(weights_file.state) == set(source.state_dict())  # `module.` stripped
        model = weights.load_weights(_tiny_vdvae(seed=9), VDVAE_FAMILY, weights_file).eval()
        got, _ = likelihood_pass(model, images, batch_size=2, noise_seed=11)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-6, err_msg=key)
        provenance = weights_file.provenance()
        assert provenance["file"] == path.name and len(provenance["sha256"]) == 64


def test_harness_checkpoint_gives_raw_or_ema_weights(tmp_path):
    outcome = train_tiny(tmp_path / "run", max_steps=5)
    weights_file = weights.read_weights_file(tmp_path / "run" / "checkpoints" / "step-5.pt")
    assert weights_file.layout == "harness" and weights_file.step == 5
    for which in ("raw", "ema"):
        model = weights.load_weights(TinyConvModel(TinyConfig()), TINY_CONV, weights_file, which)
        for key, value in outcome["model" if which == "raw" else "ema"].items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_fine_tuning_starts_from_the_checkpoint_weights(tmp_path):
    """Zero steps hand back the file's weights bit for bit; N steps from the file are the N
    steps an in-memory copy of those weights takes."""
    first = train_tiny(tmp_path / "first", max_steps=5)
    path = tmp_path / "first" / "checkpoints" / "step-5.pt"
    config = {"batch_size": 8, "lr": 1e-2, "warmup_steps": 0, "ema_rate": 0.9, "seed": 2,
              "device": "cpu", "progress": "off", "checkpoint_every_steps": 0,
              "log_every_steps": 1}
    images = realish_images(32, seed=5)
    loaded = weights.load_weights(TinyConvModel(TinyConfig()), TINY_CONV,
                                  weights.read_weights_file(path))
    zero = train(loaded, images, TrainConfig(max_steps=0, **config), tmp_path / "zero")
    assert zero.steps == 0 and zero.ema_model is zero.model
    assert not (tmp_path / "zero").exists()  # nothing written for nothing trained
    for key, value in first["model"].items():
        torch.testing.assert_close(zero.model.state_dict()[key], value, rtol=0, atol=0)
    tuned = train(loaded, images, TrainConfig(max_steps=3, **config), tmp_path / "tuned")
    copy = TinyConvModel(TinyConfig())
    copy.load_state_dict(first["model"])
    reference = train(copy, images, TrainConfig(max_steps=3, **config), tmp_path / "copy")
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(tuned.model.state_dict()[key], value, rtol=0, atol=0)


def test_misfit_names_the_key_and_the_preset_it_looks_like(tmp_path):
    path = tmp_path / "tiny-model-ema.th"
    torch.save(_tiny_vdvae().state_dict(), path)
    family = dataclasses.replace(VDVAE_FAMILY, reference_presets=("cifar10_tiny",))
    other = VDVAEConfig(**{**PRESETS["cifar10_tiny"], "zdim": 8})
    with pytest.raises(UserError) as meta_error:  # the run's check: shapes on the meta device
        weights.check_fits(path, family, other, "vdvae")
    with pytest.raises(UserError) as load_error:  # the cell's load into real weights
        weights.load_weights(VDVAE(other), family, weights.read_weights_file(path),
                             model_name="vdvae")
    for error in (meta_error, load_error):
        text = str(error.value)
        assert str(path) in text and "model 'vdvae'" in text
        assert ("key 'decoder.dec_blocks.0.enc.c4.weight' has shape [32, 8, 1, 1], the model's "
                "is [16, 8, 1, 1]") in text
        assert text.endswith("this looks like preset cifar10_tiny (harness evaluate --model "
                             "cifar10_tiny; 'preset: cifar10_tiny' in an experiment file)")
    state = _tiny_vdvae().state_dict()
    del state["decoder.gain"]
    torch.save(state, path)
    with pytest.raises(UserError, match="missing key 'decoder.gain'$"):
        weights.check_fits(path, family, VDVAEConfig(**PRESETS["cifar10_tiny"]))


class _Payload:
    """Unpickling this would run os.system: a weights file must never do that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil-model-ema.th"
    torch.save({"w": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(UserError, match=r"evil-model-ema.th: refused: it holds Python objects"):
        weights.read_weights_file(path)
    assert not marker.exists()


def test_broken_files_are_one_line_naming_the_file(tmp_path):
    good = tmp_path / "good.th"
    torch.save(_tiny_vdvae().state_dict(), good)
    truncated = tmp_path / "truncated.th"
    truncated.write_bytes(good.read_bytes()[:5000])
    text_file = tmp_path / "notes.th"
    text_file.write_text("not a checkpoint\n")
    listing = tmp_path / "list.th"
    torch.save([torch.zeros(1)], listing)
    for path, reason in ((truncated, "not a complete torch file"),
                         (text_file, "not a complete torch file"),
                         (listing, "holds list, not a state dict"),
                         (tmp_path / "absent.th", "cannot be read")):
        with pytest.raises(UserError) as error:
            weights.read_weights_file(path)
        assert str(error.value).startswith(f"checkpoint {path}") and reason in str(error.value)
        assert "\n" not in str(error.value)


def test_a_released_checkpoints_key_shapes_name_its_preset(reference_dir):
    """The five published key listings (as the released files hold them) are recognised."""
    import ast

    for preset in ("cifar10", "imagenet64"):
        lines = (reference_dir / f"state_dict_keys_{preset}.tsv").read_text().splitlines()
        shapes = {name: tuple(ast.literal_eval(shape))
                  for name, shape in (line.split("\t") for line in lines[1:])}
        assert weights.looks_like(VDVAE_FAMILY, shapes) == preset
        del shapes["decoder.gain"]
        assert weights.looks_like(VDVAE_FAMILY, shapes) is None
