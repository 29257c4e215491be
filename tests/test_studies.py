"""Evaluation studies: adding one is a module and a registration line (the toy study below is
declared here and runs through `evaluate` and the plan's estimate without a harness file
knowing it), the shared passes are computed once, and a study a family cannot run is skipped
with its reason."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import realish_images

from harness.engine import evaluate as evaluate_module
from harness.engine.config import EvalConfig
from harness.engine.evaluate import STUDIES_FILE, chosen_studies, evaluate
from harness.engine.studies import (LIKELIHOOD, SAMPLES, Study, StudyContext, StudyCost,
                                    register, registered, unregister)
from harness.run.plan import study_estimates
from models import registry

TOY_CAPABILITY = "toy_capability"  # declared here: capabilities are open strings


def _toy_run(context: StudyContext) -> list[dict]:
    """Mean of the per-image loss of the shared likelihood pass, and the sample set's mean."""
    loss = context.likelihood["loss_nats_per_dim"]
    return [{"metric": "toy_mean_loss_nats_per_dim", "value": float(loss.mean()),
             "n_images": int(loss.size), **context.base}]


def _toy_samples(context: StudyContext) -> list[dict]:
    samples = context.samples()
    return [{"metric": "toy_sample_mean_level", "value": float(samples.mean()),
             "n_samples": int(samples.shape[0])}]


@pytest.fixture
def toy_studies():
    weights_study = register(Study(
        name="toy_loss", scope="weights", run=_toy_run, reads=frozenset({LIKELIHOOD}),
        writes=("toy_mean_loss_nats_per_dim",),
        estimate_s=lambda cost, config: cost.n_test * cost.forward_s))
    cell_study = register(Study(
        name="toy_samples", scope="cell", run=_toy_samples, reads=frozenset({SAMPLES}),
        n_samples=lambda config, n_test: 10, estimate_s=lambda cost, config: 0.0))
    needy = register(Study(name="toy_needs", scope="cell", run=lambda c: [{"metric": "never"}],
                           needs=frozenset({TOY_CAPABILITY})))
    yield weights_study, cell_study, needy
    for study in (weights_study, cell_study, needy):
        unregister(study.name)


def _vdvae():
    torch.manual_seed(0)
    return registry.build_model("vdvae", preset="fmnist_tiny").eval()


def test_a_toy_study_runs_on_the_shared_passes(tmp_path, toy_studies, monkeypatch):
    calls = []
    real_pass = evaluate_module.likelihood_pass
    monkeypatch.setattr(evaluate_module, "likelihood_pass",
                        lambda *a, **k: calls.append(1) or real_pass(*a, **k))
    images = realish_images(12, size=28, seed=3)
    config = EvalConfig(batch_size=4, weights=("raw",), iw_k=0, n_grid_samples=4, flops=False,
                        hierarchy_samples=0)
    rows = evaluate({"raw": _vdvae()}, registry.get("vdvae"), images, config, tmp_path)
    assert calls == [1]  # one likelihood pass feeds every weights study
    by_metric = {r["metric"]: r for r in rows}
    bits = by_metric["test_bits_per_dim"]["value"]
    toy = by_metric["toy_mean_loss_nats_per_dim"]
    assert toy["value"] / torch.log(torch.tensor(2.0)).item() == pytest.approx(bits)
    assert toy["weights"] == "raw" and toy["n_images"] == 12
    # One sample set of max(n_grid_samples, the toy's 10) images, saved for every reader.
    saved = __import__("numpy").load(tmp_path / "samples.npy")
    assert saved.shape == (10, 1, 28, 28) and saved.dtype.name == "uint8"
    assert by_metric["toy_sample_mean_level"]["value"] == pytest.approx(float(saved.mean()))
    record = json.loads((tmp_path / STUDIES_FILE).read_text())
    assert record["toy_loss[raw]"]["status"] == "done" and record["toy_samples"]["rows"] == 1
    assert record["toy_needs"] == {"status": "skipped",
                                   "reason": f"the vdvae family lacks {TOY_CAPABILITY}"}
    assert "never" not in by_metric


def test_skips_follow_capabilities_and_config(toy_studies):
    pixelcnn = registry.get("pixelcnn")
    running, skipped = chosen_studies(pixelcnn, EvalConfig(iw_k=0))
    names = [s.name for s in running]
    assert "test_likelihood" in names and "toy_loss" in names
    assert "latents" in skipped["hierarchy_figures"]  # a PixelCNN has no latents
    assert skipped["importance_weighted"] == "the pixelcnn family lacks iw_nll"
    _, skipped = chosen_studies(registry.get("vdvae"), EvalConfig(iw_k=0))
    assert skipped["importance_weighted"] == "turned off in the eval config"
    _, skipped = chosen_studies(pixelcnn, EvalConfig(sample_methods=()))
    assert skipped["sample_grid"] == "no sampler chosen (eval.sample_methods)"


def test_the_plan_shows_each_study_and_the_sample_set(toy_studies):
    cost = StudyCost(n_test=100, forward_s=0.01, pass_s=lambda b: 0.01 * b,
                     sample_call_s=lambda n: 0.5 * n)
    estimates = study_estimates(registry.get("vdvae"), EvalConfig(weights=("raw", "ema"),
                                                                  iw_k=0, n_grid_samples=4,
                                                                  quality_samples=0),
                                cost)
    assert estimates["toy_loss"] == pytest.approx(2 * 100 * 0.01)  # once per weights name
    assert estimates["sample set"] == pytest.approx(0.5 * 10)
    assert "importance_weighted" not in estimates


def test_registration_order_is_row_order():
    names = [s.name for s in registered()]
    assert names.index("test_likelihood") < names.index("kl_per_layer") < names.index("costs")
    with pytest.raises(AssertionError):  # two studies may not share a name
        register(Study(name="costs", scope="cell", run=lambda c: []))


def test_bits_by_resolution_adds_up_to_the_rate(tmp_path):
    model = _vdvae()
    images = realish_images(10, size=28, seed=4)
    config = EvalConfig(batch_size=5, weights=("raw",), iw_k=0, n_grid_samples=0, flops=False,
                        hierarchy_samples=0)
    rows = evaluate({"raw": model}, registry.get("vdvae"), images, config, tmp_path)
    rate = next(r["value"] for r in rows if r["metric"] == "rate_bits_per_dim")
    at = [r for r in rows if r["metric"] == "rate_bits_per_dim_at_resolution"]
    share = [r for r in rows if r["metric"] == "rate_share_at_resolution"]
    assert sorted(r["resolution"] for r in at) == sorted(set(model.block_resolutions()))
    assert sum(r["layers"] for r in at) == model.config.n_top_down
    assert sum(r["value"] for r in at) == pytest.approx(rate, rel=1e-9)
    assert sum(r["value"] for r in share) == pytest.approx(1.0)


def test_hierarchy_figures_are_saved_for_a_model_with_latents(tmp_path):
    model = _vdvae()
    images = realish_images(8, size=28, seed=6)
    config = EvalConfig(batch_size=4, weights=("raw",), iw_k=0, n_grid_samples=0, flops=False,
                        hierarchy_samples=3, hierarchy_images=2)
    evaluate({"raw": model}, registry.get("vdvae"), images, config, tmp_path)
    index = json.loads((tmp_path / "hierarchy" / "figures.json").read_text())
    np = __import__("numpy")
    resolutions = sorted(set(model.block_resolutions()))
    generation = np.load(tmp_path / "hierarchy" / "generation_by_resolution.npy")
    assert generation.shape == (3, len(resolutions), 1, 28, 28) and generation.dtype == np.uint8
    assert index["figures"]["generation_by_resolution"]["column_values"] == resolutions
    fixed = np.load(tmp_path / "hierarchy" / "fixed_top_resampled_below.npy")
    assert fixed.shape[:2] == (2, len(resolutions))
    originals = np.load(tmp_path / "hierarchy" / "fixed_top_resampled_below_originals.npy")
    assert np.array_equal(originals, images[:2].numpy())
    assert set(index["figures"]) == {"generation_by_resolution", "fixed_top_resampled_below",
                                     "temperature_sweep", "reconstructions"}


def test_sample_quality_rows_floor_and_run_cache(tmp_path):
    """The quality study scores the sample set and the real-vs-real floor; the train features
    and the floor are computed once per run (the cache), and a second cell reuses them."""
    model = _vdvae()
    images = realish_images(40, size=28, seed=7)
    train = realish_images(30, size=28, seed=8)
    config = EvalConfig(batch_size=8, weights=("raw",), iw_k=0, n_grid_samples=0, flops=False,
                        hierarchy_samples=0, quality_samples=12)
    cache = tmp_path / "cache"
    rows = evaluate({"raw": model}, registry.get("vdvae"), images, config, tmp_path / "a",
                    train_images=train, cache_dir=cache)
    quality = {(r["metric"], r["quality_set"]): r for r in rows if "quality_set" in r}
    assert {m for m, _ in quality} >= {"fd", "kid_mean", "precision", "recall", "density",
                                       "coverage", "memorized_fraction",
                                       "memorized_fraction_pixels"}
    assert quality[("fd", "samples")]["n_samples"] == 12
    assert quality[("fd", "samples")]["n_reference"] == 12
    assert quality[("fd", "real_vs_real")]["features"] == "random_cnn"
    # untrained samples are far from real images; real halves are not
    assert quality[("fd", "samples")]["value"] > 5 * quality[("fd", "real_vs_real")]["value"]
    cached = sorted(p.name.split("-")[0] for p in (cache / "quality").iterdir())
    assert cached == ["real", "train"]
    stamps = {p: p.stat().st_mtime_ns for p in (cache / "quality").iterdir()}
    again = evaluate({"raw": model}, registry.get("vdvae"), images, config, tmp_path / "b",
                     train_images=train, cache_dir=cache)
    assert {p: p.stat().st_mtime_ns for p in (cache / "quality").iterdir()} == stamps
    floor = [r for r in again if r.get("quality_set") == "real_vs_real"]
    assert floor == [r for r in rows if r.get("quality_set") == "real_vs_real"]


def test_sample_quality_with_too_few_test_images_is_skipped_with_its_reason(tmp_path):
    config = EvalConfig(batch_size=8, weights=("raw",), iw_k=0, n_grid_samples=0, flops=False,
                        hierarchy_samples=0, quality_samples=12)
    rows = evaluate({"raw": _vdvae()}, registry.get("vdvae"), realish_images(12, size=28),
                    config, tmp_path)
    assert not [r for r in rows if "quality_set" in r]
    record = json.loads((tmp_path / STUDIES_FILE).read_text())
    assert record["sample_quality"]["status"] == "skipped"
    assert "needs at least 20 test images" in record["sample_quality"]["reason"]
    assert not (tmp_path / "samples.npy").exists()  # nothing drawn for a skipped study
