"""End to end on a released model: the public reference's tiny CIFAR VDVAE
(../shared/vdvae_reference/vdvae_tiny_cifar.pt), saved in the reference's two file layouts, with
its images written out as PNGs, evaluates through an experiment file (`harness run`) and through
`harness evaluate` to the file's expected bits/dim, within the one-sample ELBO's noise over those
images."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from harness import cli
from harness.data.splits import seeded_permutation
from harness.engine.evaluate import likelihood_pass
from harness.run.results_folder import merged_rows
from harness.run.runner import run_experiment
from models.likelihoods import nats_to_bits
from models.vdvae import VDVAE, VDVAEConfig

EVAL = ("eval: {batch_size: 4, n_grid_samples: 4, sample_batch_size: 2, sample_repeats: 1, "
        "sample_warmup: 0, flops: false, hierarchy_samples: 0}")


@pytest.fixture
def reference_files(tmp_path, reference_dir):
    """The state dict as `-model-ema.th` and as DDP's `-model.th`, the images as PNGs."""
    ref = torch.load(reference_dir / "vdvae_tiny_cifar.pt", weights_only=True)
    torch.save(ref["state_dict"], tmp_path / "tiny-iter-0-model-ema.th")
    torch.save({"module." + k: v for k, v in ref["state_dict"].items()},
               tmp_path / "tiny-iter-0-model.th")
    (tmp_path / "images").mkdir()
    for i, image in enumerate(ref["images_nhwc_uint8"].numpy()):
        Image.fromarray(image).save(tmp_path / "images" / f"{i:03d}.png")
    return tmp_path, ref


def _noise_sd_of_mean_bits(ref, draws: int = 16) -> float:
    """Standard deviation of the N-image mean one-sample ELBO (bits/dim) over posterior draws."""
    model = VDVAE(VDVAEConfig(**ref["config"]))
    model.load_reference_state_dict(ref["state_dict"])
    images = ref["images_nhwc_uint8"].permute(0, 3, 1, 2).contiguous()
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        means = [float(nats_to_bits(model(images, generator=generator)["elbo_nats_per_dim"]
                                    .double().mean())) for _ in range(draws)]
    return float(np.std(means, ddof=1))


def _check_cell(cell_dir, ref, checkpoint_name: str, weights=("raw", "ema")) -> float:
    rows = merged_rows(cell_dir)  # the cell's rows and its speed-phase rows
    bits = {r["weights"]: r["value"] for r in rows if r["metric"] == "test_bits_per_dim"}
    # One file holds one set of weights: an experiment naming both gets the same value under
    # each; `harness evaluate` reports a released file once, as "raw".
    assert set(bits) == set(weights) and len(set(bits.values())) == 1
    assert {r["metric"] for r in rows} >= {"test_bits_per_dim_ci95", "kl_bits_per_dim",
                                           "active_units", "sample_images_per_s", "steps"}
    assert next(r["value"] for r in rows if r["metric"] == "steps") == 0
    provenance = json.loads((cell_dir / "provenance.json").read_text())
    assert provenance["checkpoint"]["file"] == checkpoint_name
    assert len(provenance["checkpoint"]["sha256"]) == 64
    assert "drop_last" in provenance["evaluation"]["images"]
    # Per image, the harness's values are those of the reference weights in memory with the
    # harness's seeded noise (test split = the PNGs in seeded-permutation order).
    model = VDVAE(VDVAEConfig(**ref["config"])).eval()
    model.load_reference_state_dict(ref["state_dict"])
    order = seeded_permutation(len(ref["images_nhwc_uint8"]), 0)
    images = ref["images_nhwc_uint8"].permute(0, 3, 1, 2)[torch.from_numpy(order)].contiguous()
    with torch.inference_mode():
        arrays, _ = likelihood_pass(model, images, batch_size=4, noise_seed=0)
    per_image = np.load(cell_dir / "per_image_test_bits_per_dim_raw.npy")
    # float32 sums over 3,072 dims: the cell's process may pick other kernels (threads, ISA) than
    # this one, a few ulps apart (2e-7 relative seen on an AMD Zen 4 machine); 1e-6 is ~8 ulps.
    np.testing.assert_allclose(per_image, nats_to_bits(arrays["loss_nats_per_dim"]), rtol=1e-6,
                               atol=0)
    return bits["raw"]


@pytest.mark.slow
def test_reference_checkpoint_evaluates_to_its_expected_bits_per_dim(reference_files, capsys):
    folder, ref = reference_files
    expected = float(nats_to_bits(ref["expected"]["elbo_nats_per_dim"].double().mean()))
    # Two independent one-sample estimates (the reference's noise, ours) differ by noise of
    # sd √2·σ(mean); 4 of those is a bound a correct load passes and a wrong one does not.
    tolerance = 4 * math.sqrt(2) * _noise_sd_of_mean_bits(ref)
    assert 0 < tolerance < 0.2

    (folder / "tiny.yaml").write_text(f"""
data: {{dataset: image_folder, options: {{path: {folder / 'images'}, validation_size: 0,
       test_size: 4}}}}
models:
  tiny: {{family: vdvae, preset: cifar10_tiny, checkpoint: tiny-iter-0-model-ema.th}}
train: {{max_steps: 0}}
{EVAL}
runner: {{probe_steps: 0, report: false}}
""")
    assert run_experiment(folder / "tiny.yaml", results_dir=folder / "run") == 0
    measured_run = _check_cell(folder / "run" / "cells" / "tiny_s0", ref,
                               "tiny-iter-0-model-ema.th")
    assert abs(measured_run - expected) < tolerance, (measured_run, expected, tolerance)

    capsys.readouterr()
    status = cli.main(["evaluate", str(folder / "tiny-iter-0-model.th"), "--model", "cifar10_tiny",
                       "--dataset", "image_folder", "--set", f"path={folder / 'images'}",
                       "--set", "validation_size=0", "--set", "test_size=4",
                       "--set", "batch_size=4", "--set", "n_grid_samples=4", "--set",
                       "flops=false", "--set", "hierarchy_samples=2", "--set",
                       "hierarchy_images=1", "--results", str(folder / "cli")])
    assert status == 0
    out = capsys.readouterr().out
    # The paper's hierarchy figures, drawn from the reference's own weights, in the report.
    figures = folder / "cli" / "evaluate_tiny-iter-0-model" / "figures"
    assert {"generation_by_resolution.png", "fixed_top_resampled_below.png",
            "temperature_sweep.png", "reconstructions.png",
            "bits_by_resolution.png"} <= {p.name for p in figures.glob("*.png")}
    measured_cli = _check_cell(folder / "cli" / "cells" / "cifar10_tiny_s0", ref,
                               "tiny-iter-0-model.th", weights=("raw",))
    assert measured_cli == pytest.approx(measured_run, abs=1e-9)  # same weights, same noise
    assert f"tiny-iter-0-model.th: {measured_cli:.4f} ± " in out
    assert "no published figure for preset cifar10_tiny on image_folder" in out


def test_evaluate_refuses_a_broken_file_with_one_line(tmp_path, capsys):
    bad = tmp_path / "cifar10-model-ema.th"
    bad.write_bytes(b"PK\x03\x04 truncated")
    status = cli.main(["evaluate", str(bad), "--model", "cifar10", "--dataset", "cifar10",
                       "--results", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0
    assert err.startswith(f"harness: error: checkpoint {bad}: refused: not a complete torch file")
    assert not (tmp_path / "out" / "cells").exists()


def test_published_line_says_whether_the_figure_is_inside_our_interval():
    from harness.run.evaluate_command import published_line

    assert "3.80 bits/dim; it lies inside our 95% CI [3.790, 3.810]" in \
        published_line("imagenet32", "imagenet32", 3.80, 0.01)
    assert "2.87 bits/dim; it lies outside" in published_line("cifar10", "cifar10", 2.95, 0.01)
    assert published_line("cifar10", "imagenet32", 3.0, 0.1).startswith("no published figure")


def test_checkpoint_paths_resolve_and_a_missing_release_says_where_to_get_it(tmp_path,
                                                                             monkeypatch):
    from harness.errors import UserError
    from harness.experiment.load import load_experiment
    from harness.run.cell import check_checkpoints

    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    name = "cifar10-seed0-iter-900000-model-ema.th"
    (tmp_path / "e.yaml").write_text(
        "data: {dataset: cifar10}\nmodels:\n"
        "  a: {family: vdvae, preset: cifar10_tiny,\n"
        f"      checkpoint: $HARNESS_DATA/checkpoints/{name}}}\n"
        "  b: {family: vdvae, preset: cifar10_tiny, checkpoint: ckpt/mine.th}\n"
        "train: {max_steps: 0}\n")
    cells = load_experiment(tmp_path / "e.yaml").cells
    assert [c.checkpoint for c in cells] == [str(tmp_path / "data" / "checkpoints" / name),
                                            str(tmp_path / "ckpt" / "mine.th")]
    assert cells[0].train.max_steps == 0
    with pytest.raises(UserError, match=r"cell a_s0: checkpoint .* not found; it is the "
                       r"reference's released cifar10 checkpoint: download it from https://"
                       r"openaipublic.blob.core.windows.net/very-deep-vaes-assets/"
                       rf"vdvae-assets-2/{name}$"):
        check_checkpoints(cells)
    with pytest.raises(UserError, match=r"cell b_s0: checkpoint .*mine.th not found; check"):
        check_checkpoints(cells[1:])


@pytest.mark.slow
def test_published_file_evaluates_what_is_there_and_skips_what_is_missing(
        reference_files, tmp_path, monkeypatch, capsys):
    """experiments/published_checkpoints.yaml's shape: models with their own `data:`; a model
    whose release file or dataset is missing is skipped with where to get it, the others run,
    and a re-run once the file is there runs it."""
    folder, ref = reference_files
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "harness_data"))
    monkeypatch.setenv("HARNESS_DOWNLOAD", "0")  # the missing dataset must not be fetched
    release = "cifar10-seed0-iter-900000-model-ema.th"
    images = (f"{{dataset: image_folder, options: {{path: {folder / 'images'}, "
              "validation_size: 0, test_size: 4}}")
    (folder / "published.yaml").write_text(f"""
models:
  tiny: {{family: vdvae, preset: cifar10_tiny, checkpoint: tiny-iter-0-model-ema.th,
          data: {images}}}
  released: {{family: vdvae, preset: cifar10_tiny, data: {images},
              checkpoint: $HARNESS_DATA/checkpoints/{release}}}
  nodata: {{family: vdvae, preset: cifar10_tiny, checkpoint: tiny-iter-0-model-ema.th,
            data: {{dataset: cifar10, data_dir: {tmp_path / 'nowhere'}}}}}
train: {{max_steps: 0}}
{EVAL}
runner: {{probe_steps: 0}}
""")
    results = folder / "published"
    assert run_experiment(folder / "published.yaml", results_dir=results) == 0
    out = capsys.readouterr().out
    path = tmp_path / "harness_data" / "checkpoints" / release
    assert (f"skipped: cell released_s0: checkpoint {path} not found; it is the reference's "
            "released cifar10 checkpoint: download it from "
            "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/"
            f"{release}") in out
    assert "skipped: cell nodata_s0: dataset 'cifar10': neither cifar-10-batches-py/ nor " \
        "cifar-10-python.tar.gz found in" in out
    with open(results / "summary.csv", newline="") as handle:
        summary = {row["cell"]: row for row in csv.DictReader(handle)}
    assert summary["tiny_s0"]["status"] == "done"
    assert summary["tiny_s0"]["dataset"] == "image_folder"
    assert summary["released_s0"]["status"] == summary["nodata_s0"]["status"] == "skipped"
    assert "download it from" in summary["released_s0"]["error"]
    _check_cell(results / "cells" / "tiny_s0", ref, "tiny-iter-0-model-ema.th")
    assert (results / "published.pdf").is_file()  # the report takes skipped cells in its stride

    (tmp_path / "harness_data" / "checkpoints").mkdir(parents=True)
    (tmp_path / "harness_data" / "checkpoints" / release).write_bytes(
        (folder / "tiny-iter-0-model-ema.th").read_bytes())  # the release file arrives
    assert run_experiment(folder / "published.yaml", results_dir=results) == 0
    with open(results / "summary.csv", newline="") as handle:
        summary = {row["cell"]: row for row in csv.DictReader(handle)}
    assert summary["released_s0"]["status"] == "done"
    assert summary["nodata_s0"]["status"] == "skipped"
    assert summary["released_s0"]["test_bits_per_dim"] == summary["tiny_s0"]["test_bits_per_dim"]
