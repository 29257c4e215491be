"""`harness report`: tables, figures and a PDF as pure functions of a results folder.

    build_report(Path("results/depth_sweep")) -> Path("results/depth_sweep/depth_sweep.pdf")

One rule: the report goes beside its results. Output layout, for `out_dir` (default: the
results folder itself; `harness report --out DIR` chooses another) and the experiment name
`<exp>` (plan.json / experiment.yaml / the rows' `experiment` / folder name):

    <out_dir>/<exp>.pdf                     title page, table pages, one page per figure
    <out_dir>/<exp>/report.md               the same as Markdown (links to the PNGs)
    <out_dir>/<exp>/tables/<name>.{csv,md,tex}
    <out_dir>/<exp>/figures/<name>.png

`harness run` and `harness report RESULTS` therefore both write `RESULTS/<exp>.pdf` and
`RESULTS/<exp>/`. Every file goes through `harness.atomic`. Inputs are read only (docs/results.md);
nothing here touches a model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

from harness.atomic import write_bytes, write_text
from harness.errors import UserError
from harness.report import figures as figs
from harness.report import figures_latents, lossless, quality
from harness.report.format import Table, markdown_document, to_csv, to_latex
from harness.report.load import Results, load_results
from harness.report.overview import Overview, build_overview
from harness.report.pdf import build_pages, write_pdf
from harness.report.stats import paired_differences, primary_weights
from harness.report.tables import (
    depth_means_table, paired_table, published_tables, sampling_table, summary_table,
)

__all__ = ["Report", "build_report", "render_report"]


@dataclass
class Report:
    experiment: str
    pdf: Path
    directory: Path  # <out_dir>/<experiment>/
    page_count: int
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG
    skipped: dict[str, str] = field(default_factory=dict)  # figure title -> reason
    notes: list[str] = field(default_factory=list)


def build_report(results_dir: Path, out_dir: Path | None = None) -> Path:
    """Rebuild the report of `results_dir`; returns the PDF's path (see the module docstring)."""
    report = render_report(results_dir, out_dir)
    print(f"report: {report.pdf} ({report.page_count} pages; tables and figures in "
          f"{report.directory}/)" + (f"; skipped: {', '.join(report.skipped)}"
                                     if report.skipped else ""))
    return report.pdf


def _figures(results: Results, paired) -> list[figs.Rendered]:
    summary, metrics = results.summary, results.metrics
    weights = primary_weights(summary)
    rendered: list[figs.Rendered] = []
    datasets = sorted(summary["dataset"].dropna().unique()) or [None]
    for dataset in datasets:
        suffix = "" if len(datasets) == 1 else f"_{dataset}"
        own = summary if dataset is None else summary[summary["dataset"] == dataset]
        own_paired = paired if dataset is None else paired[paired["dataset"] == dataset]
        for figure in (figs.bits_vs_depth(own, suffix, metrics),
                       figs.paired_differences(own_paired, weights, suffix),
                       figs.bits_vs_params(own, suffix)):
            if suffix:
                figure.title += f" ({dataset})"
                if figure.figure is not None:
                    figure.figure.axes[0].set_title(
                        figure.figure.axes[0].get_title() + f" ({dataset})")
            rendered.append(figure)
    rendered.append(figs.sampling_throughput(metrics, summary))
    rendered.append(figs.layer_heatmap(metrics, summary, weights, "kl_bits_per_dim"))
    rendered.append(figs.layer_heatmap(metrics, summary, weights, "active_units"))
    rendered.append(quality.bits_vs_quality(metrics, summary))
    rendered += figures_latents.hierarchy_figures(results, weights)
    rendered.append(figs.training_curves(
        summary, {name: files.train_log for name, files in results.cells.items()}))
    rendered += figs.sample_grids(
        summary, {name: files.samples for name, files in results.cells.items() if files.samples},
        results.notes)
    return rendered


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _markdown_report(overview: Overview, tables: list[Table], produced: list[figs.Rendered],
                     skipped: list[figs.Rendered], notes: list[str]) -> str:
    parts = [f"# {overview.title}\n"]
    parts.append("\n".join(f"* **{label}:** {text}" for label, text in overview.facts) + "\n")
    parts.append("## Caveats\n\n" + "\n".join(f"* {c}" for c in overview.caveats) + "\n")
    for table in tables:
        parts.append(markdown_document(table).replace("### ", "## ", 1))
    for rendered in produced:
        parts.append(f"## {rendered.title}\n\n![{rendered.title}](figures/{rendered.name}.png)"
                     f"\n\n{rendered.note}\n")
    if skipped:
        parts.append("## Figures skipped\n\n"
                     + "\n".join(f"* {r.title}: {r.note}" for r in skipped) + "\n")
    if notes:
        parts.append("## Notes while reading the results\n\n"
                     + "\n".join(f"* {n}" for n in notes) + "\n")
    return "\n".join(parts)


def render_report(results_dir: Path, out_dir: Path | None = None) -> Report:
    """`build_report`, returning everything it wrote (for the runner and the tests)."""
    results = load_results(Path(results_dir))
    out_dir = Path(results_dir) if out_dir is None else Path(out_dir)
    directory = out_dir / results.experiment
    if directory.resolve() == (results.root / "cells").resolve():
        raise UserError(f"report folder {directory} would be the results' cells/ folder; "
                        "pass another --out")
    with matplotlib.rc_context(figs.STYLE):
        paired = paired_differences(results)
        summary = summary_table(results.summary)
        published = published_tables()
        others = [t for t in (depth_means_table(results.summary), paired_table(paired),
                              sampling_table(results.metrics, results.summary),
                              quality.quality_table(results.metrics, results.summary),
                              lossless.codec_table(results.metrics, results.summary))
                  if t is not None]
        rendered = _figures(results, paired)
        produced = [r for r in rendered if r.figure is not None]
        skipped = [r for r in rendered if r.figure is None]
        overview = build_overview(results, paired)

        all_tables = [summary, *others, *published]
        for table in all_tables:
            write_text(directory / "tables" / f"{table.name}.csv", to_csv(table))
            write_text(directory / "tables" / f"{table.name}.md", markdown_document(table))
            write_text(directory / "tables" / f"{table.name}.tex", to_latex(table))
        pngs = {}
        for figure in produced:
            pngs[figure.name] = directory / "figures" / f"{figure.name}.png"
            write_bytes(pngs[figure.name], _png(figure.figure))
        _remove_stale(directory, {t.name for t in all_tables}, set(pngs))
        pdf_path = out_dir / f"{results.experiment}.pdf"
        pages = build_pages(overview, summary, published, others, produced, skipped,
                            results.notes)
        page_count = write_pdf(pdf_path, pages, overview.title)
        write_text(directory / "report.md",
                   _markdown_report(overview, all_tables, produced, skipped, results.notes))
    return Report(experiment=results.experiment, pdf=pdf_path, directory=directory,
                  page_count=page_count, tables={t.name: t for t in all_tables}, figures=pngs,
                  skipped={r.title: r.note for r in skipped}, notes=list(results.notes))


_KNOWN_FIGURES = ("bits_vs_depth", "paired_differences", "bits_vs_params", "sampling_throughput",
                  "kl_per_layer", "active_units_per_layer", "training_curves", "samples",
                  "bits_by_resolution", "generation_by_resolution", "fixed_top_resampled_below",
                  "temperature_sweep", "reconstructions", "bits_vs_sample_quality")


def _remove_stale(directory: Path, tables: set[str], figures: set[str]) -> None:
    """Delete figures/tables an earlier build wrote that this build did not (data now absent),
    so the folder never shows a figure the PDF lacks. Only our own file names are touched."""
    for path in (directory / "figures").glob("*.png"):
        if path.stem not in figures and path.stem.startswith(_KNOWN_FIGURES):
            path.unlink()
    known_tables = ("summary", "depth_means", "paired_differences", "sampling_speed",
                    "published_")
    for path in (directory / "tables").glob("*"):
        if (path.suffix in (".csv", ".md", ".tex") and path.stem not in tables
                and path.stem.startswith(known_tables)):
            path.unlink()
