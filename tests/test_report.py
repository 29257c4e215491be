"""`harness report` end to end on a fixture results folder (tests/fixtures/report/builder.py).

The full fixture has VDVAE cells at depths 1, 2, 4, 14 (two seeds at 1 and 14, one failed cell
at 7), a Gated PixelCNN cell, PNG and WebP codec cells, per-image bits/dim, training logs,
provenance, sample grids and sampling rows. The report is built once per module (~5 s).
Set UPDATE_GOLDEN=1 to rewrite tests/golden/report_summary.md after a deliberate change.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import statistics
from pathlib import Path



import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.errors import UserError
from harness.report import build_report, render_report
from harness.report import figures_latents as fl
from harness.report.load import load_results

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden" / "report_summary.md"


# Pages of the tables after the summary: depth means, paired differences, sampling speed,
# sample quality.
TABLE_PAGES = 2

def _load_builder():
    spec = importlib.util.spec_from_file_location(
        "report_fixture_builder", TESTS / "fixtures" / "report" / "builder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = builder.build_results(root / "results")
    report = render_report(results, root / "out")
    return results, report


def _pdf_pages(path: Path) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", path.read_bytes()))


def test_summary_table_matches_golden(built):
    _, report = built
    text = (report.directory / "tables" / "summary.md").read_text(encoding="utf-8")
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def _hand_paired(shallow, deep):
    diffs = [float(a) - float(b) for a, b in zip(shallow, deep)]
    mean = statistics.fmean(diffs)
    ci = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    better = sum(1 for a, b in zip(shallow, deep) if b < a) / len(diffs)
    return mean, ci, better


def test_paired_differences_match_hand_computation(built):
    _, report = built
    paired = pd.read_csv(report.directory / "tables" / "paired_differences.csv")
    expected_pairs = {
        ("vdvae_g1_s0", "raw"): ("vdvae_g14_s0", "same seed"),
        ("vdvae_g1_s0", "ema"): ("vdvae_g14_s0", "same seed"),
        ("vdvae_g1_s1", "raw"): ("vdvae_g14_s1", "same seed"),
        ("vdvae_g2_s2", "raw"): ("vdvae_g14_s0", "seed-0 fallback"),
        ("vdvae_g4_s0", "raw"): ("vdvae_g14_s0", "same seed"),
    }
    got = {(r.cell, r.weights): (r.reference_cell, r.pairing) for r in paired.itertuples()}
    assert got == expected_pairs
    depth_seed = {c: (d, s) for c, d, s, _ in builder.VDVAE_CELLS}
    for row in paired.itertuples():
        shallow = builder.per_image_bits(*depth_seed[row.cell], row.weights)
        deep = builder.per_image_bits(*depth_seed[row.reference_cell], row.weights)
        mean, ci, better = _hand_paired(shallow, deep)
        assert row.n_images == builder.N_TEST
        assert row.mean_diff_bits_per_dim == pytest.approx(mean, abs=1e-12)
        assert row.ci95_bits_per_dim == pytest.approx(ci, abs=1e-12)
        assert row.fraction_deeper_better == pytest.approx(better, abs=1e-12)
    # The fixture's depth 4 loses to depth 14 on some images: the fraction is not trivially 1.
    assert 0.0 < paired.loc[paired["cell"] == "vdvae_g4_s0", "fraction_deeper_better"].iloc[0] < 1


def test_csv_tables_hold_the_rows(built):
    results, report = built
    tables = report.directory / "tables"
    summary = pd.read_csv(tables / "summary.csv")
    assert list(summary["cell"]) == [
        "vdvae_g1_s0", "vdvae_g1_s1", "vdvae_g2_s2", "vdvae_g4_s0", "vdvae_g7_s0",
        "vdvae_g14_s0", "vdvae_g14_s1", "speed_vdvae_56", "pixelcnn_s0", "speed_pixelcnn_56",
        "codec_png", "codec_webp"]
    by_cell = summary.set_index("cell")
    assert by_cell.loc["vdvae_g4_s0", "test_bits_per_dim"] == pytest.approx(
        builder.per_image_bits(4, 0).mean(), abs=1e-12)
    assert math.isnan(by_cell.loc["vdvae_g7_s0", "test_bits_per_dim"])
    assert by_cell.loc["vdvae_g7_s0", "status"] == "failed"
    ablation = pd.read_csv(tables / "published_depth_ablation.csv")
    assert dict(zip(ablation["effective_depth"], ablation["test_bits_per_dim"])) == {
        3: 4.30, 6: 4.18, 12: 4.06, 24: 3.98, 48: 3.95}
    published = pd.read_csv(tables / "published_bits_per_dim.csv").set_index("model")
    assert published.loc["Gated PixelCNN", "ImageNet-32"] == 3.83
    assert published.loc["VDVAE", "CIFAR-10"] == 2.87
    codecs = pd.read_csv(tables / "published_codecs.csv").set_index("codec")
    assert codecs.loc["WebP lossless", "CIFAR-10"] == 4.61
    sampling = pd.read_csv(tables / "sampling_speed.csv")
    assert sorted(set(sampling["image_size"])) == [14, 28, 56]  # 56: the sampling-speed cells
    speedup = {(int(r.image_size), r.model_label, r.method): r.fastest_speedup
               for r in sampling.itertuples()}
    assert speedup[(56, "Gated PixelCNN", "naive")] == pytest.approx(210.0 / 0.03)
    assert speedup[(28, "Gated PixelCNN", "naive")] == pytest.approx(850.0 / 0.5)
    assert speedup[(28, "Gated PixelCNN", "cached")] == pytest.approx(850.0 / 12.0)
    assert speedup[(28, "VDVAE", "ancestral")] == pytest.approx(1.0)
    assert set(sampling.loc[sampling["image_size"] == 28, "fastest"]) == {"VDVAE ancestral"}
    means = pd.read_csv(tables / "depth_means.csv").set_index("effective_depth")
    assert means.loc[14, "n_seeds"] == 2
    assert means.loc[14, "mean_test_bits_per_dim"] == pytest.approx(
        (builder.per_image_bits(14, 0).mean() + builder.per_image_bits(14, 1).mean()) / 2)


def test_latex_tables_have_every_row(built):
    _, report = built
    tex = (report.directory / "tables" / "summary.tex").read_text(encoding="utf-8")
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == 12
    assert all(line.endswith(r" \\") and line.count(" & ") == 12 for line in body)
    assert body[0].startswith(r"vdvae\_g1\_s0 & VDVAE & 1 & 0 & 402,735 & 3.655 $\pm$ 0.095")
    assert r"\begin{tabular}{llrrrrlrrrrrl}" in tex and r"\toprule" in tex
    paired = (report.directory / "tables" / "paired_differences.tex").read_text()
    assert r"vdvae\_g2\_s2 & 2 & 2 & vdvae\_g14\_s0 & seed-0 fallback & raw & 40 &" in paired


def test_pdf_has_title_table_and_figure_pages(built):
    _, report = built
    assert report.pdf.name == "fixture_sweep.pdf" and report.pdf.read_bytes()[:5] == b"%PDF-"
    # 1 title page + summary beside published numbers + the pages of the other four tables
    # (depth means, paired, sampling, sample quality) + 14 figures (depth, paired, params,
    # sampling, KL, active units, sample quality, bits by resolution, four hierarchy figures,
    # training, samples).
    assert report.skipped == {}
    assert report.page_count == _pdf_pages(report.pdf) == 2 + TABLE_PAGES + 14


def test_figures_are_written_as_png(built):
    _, report = built
    expected = {"bits_vs_depth", "paired_differences", "bits_vs_params", "sampling_throughput",
                "kl_per_layer", "active_units_per_layer", "training_curves", "samples",
                "bits_vs_sample_quality", "bits_by_resolution", "generation_by_resolution",
                "fixed_top_resampled_below", "temperature_sweep", "reconstructions"}
    assert set(report.figures) == expected
    for path in report.figures.values():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_hierarchy_figures_print_their_measures_under_the_columns(built):
    results = load_results(built[0])
    cell, _, index = fl._cells_with_figures(results)[0]

    generation = fl.generation_by_resolution(results)
    images, _ = fl._load(results, cell, index, "generation_by_resolution")
    labels = [t.get_text() for t in generation.figure.axes[0].get_xticklabels()]
    assert labels[0] == "1×1"  # the first column has nothing before it
    assert labels[1:] == [f"{c}\n{100 * v:.1f}%" for c, v in
                          zip(["7×7", "14×14", "28×28"], fl.column_change(images), strict=True)]
    assert "% of the 0-255 range" in generation.note

    fixed = fl.fixed_top_resampled_below(results)
    images, _ = fl._load(results, cell, index, "fixed_top_resampled_below")
    labels = [t.get_text() for t in fixed.figure.axes[0].get_xticklabels()]
    assert labels[0] == "input"
    assert labels[1:] == [f"≤{r}\n{100 * v:.1f}%" for r, v in
                          zip([1, 7, 14, 28], fl.redraw_spread(images), strict=True)]
    assert "standard deviation across redraws" in fixed.note


def test_report_markdown_states_provenance_compute_and_caveats(built):
    _, report = built
    text = (report.directory / "report.md").read_text(encoding="utf-8")
    assert "**machine:** ci-runner: Linux-6.1-x86_64, x86_64, 2 cores, 1 torch thread" in text
    assert "**versions:** numpy 2.4.6, python 3.11.2, torch 2.13.0\n" in text  # None left out
    assert "**git revision:** 0123abcd4567\n" in text and "**device:** cpu" in text
    total = (sum(420.0 + depth for _, depth, _, _ in builder.VDVAE_CELLS) + 610.0 + 2 * 3.0
             + 2 * 30.0)
    assert f"{total:,.0f} s, the sum of wall_s over 12 cells" in text
    assert "Short runs: at most 1,600 training steps" in text
    assert "training-speed benefit of depth" in text
    assert "figures/kl_per_layer.png" in text


def test_missing_data_is_skipped_with_notes_and_stale_figures_removed(built, tmp_path):
    _, full = built
    out = tmp_path / "out"
    shutil.copytree(full.directory, out / "fixture_sweep")  # an earlier, fuller build
    results = builder.build_results(tmp_path / "results", variant="minimal")
    report = render_report(results, out)
    assert set(report.figures) == {"bits_vs_params"}
    assert set(report.skipped) == {
        "Test bits/dim vs effective stochastic depth",
        "Paired difference vs the deepest model, same test images",
        "Sampling throughput vs resolution",
        "KL per top-down layer (bits/dim): which layers carry information",
        "Active latent units per top-down layer", "Training loss (bits/dim) vs step", "Samples",
        "Likelihood vs sample quality", "Where the rate goes: KL share by resolution",
        "Generation by resolution", "Posterior latents kept up to a resolution, the rest redrawn",
        "Samples at reduced latent temperature", "Test images and their reconstructions"}
    assert "no depth sweep" in report.skipped["Test bits/dim vs effective stochastic depth"]
    # title + summary/published + depth-means table + 1 figure
    assert report.page_count == 4 == _pdf_pages(report.pdf)
    assert sorted(p.name for p in (report.directory / "figures").iterdir()) == [
        "bits_vs_params.png"]
    assert not (report.directory / "tables" / "paired_differences.csv").exists()
    assert "## Figures skipped" in (report.directory / "report.md").read_text()


def test_cli_report_goes_beside_its_results(tmp_path, monkeypatch, capsys):
    """One rule for run and report: RESULTS/<exp>.pdf and RESULTS/<exp>/, whatever the current
    directory; nothing is written there."""
    results = builder.build_results(tmp_path / "results", variant="minimal")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(results)]) == 0
    assert (results / "fixture_sweep.pdf").is_file()
    assert (results / "fixture_sweep" / "tables" / "summary.csv").is_file()
    assert list(elsewhere.iterdir()) == []
    assert f"{results}/fixture_sweep.pdf" in capsys.readouterr().out
    assert main(["report", str(results), "--out", str(tmp_path / "chosen")]) == 0
    assert (tmp_path / "chosen" / "fixture_sweep.pdf").is_file()


def test_empty_or_missing_folder_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(UserError, match="no results in .*run `harness run"):
            build_report(folder, tmp_path / "out")
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results in" in capsys.readouterr().err
    empty_summary = tmp_path / "header_only"
    empty_summary.mkdir()
    (empty_summary / "summary.csv").write_text("cell,model\n")
    with pytest.raises(UserError, match="no results in"):
        build_report(empty_summary, tmp_path / "out")


def test_corrupt_inputs_are_user_errors(tmp_path):
    results = builder.build_results(tmp_path / "results", variant="minimal")
    with open(results / "metrics.jsonl", "a") as handle:
        handle.write("{not json}\n")
    with pytest.raises(UserError, match="metrics.jsonl has a corrupt row"):
        load_results(results)
    (results / "metrics.jsonl").unlink()
    text = (results / "summary.csv").read_text()
    (results / "summary.csv").write_text(text.replace("codec_png", "../escape", 1))
    with pytest.raises(UserError, match="not a plain folder name"):
        load_results(results)


def test_summary_is_rebuilt_from_metrics_when_summary_csv_is_missing(tmp_path):
    results = builder.build_results(tmp_path / "results")
    (results / "summary.csv").unlink()
    loaded = load_results(results)
    by_cell = loaded.summary.set_index("cell")
    assert by_cell.loc["vdvae_g4_s0", "test_bits_per_dim"] == pytest.approx(
        builder.per_image_bits(4, 0).mean())
    assert by_cell.loc["vdvae_g4_s0", "weights"] == "raw"
    assert by_cell.loc["vdvae_g7_s0", "status"] == "failed"
    assert by_cell.loc["pixelcnn_s0", "sample_images_per_s_cached"] == 12.0
    assert any("summary.csv missing" in note for note in loaded.notes)


def test_unreadable_per_image_file_is_noted_not_fatal(tmp_path):
    results = builder.build_results(tmp_path / "results")
    (results / "cells" / "vdvae_g4_s0" / "per_image_test_bits_per_dim_raw.npy").write_bytes(
        b"not a numpy file")
    np.save(results / "cells" / "vdvae_g1_s1" / "per_image_test_bits_per_dim_raw.npy",
            np.zeros(3))
    (results / "cells" / ".ipynb_checkpoints").mkdir()  # not a cell: ignored, not an error
    from harness.report.stats import paired_differences

    loaded = load_results(results)
    assert ".ipynb_checkpoints" not in loaded.cells
    paired = paired_differences(loaded)
    assert "vdvae_g4_s0" not in set(paired["cell"])
    assert "vdvae_g1_s1" not in set(paired["cell"])
    assert any("vdvae_g4_s0" in n and "unreadable" in n for n in loaded.notes)
    assert any("not the same test split" in n for n in loaded.notes)
