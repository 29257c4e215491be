"""The report's prose: what ran where, compute used, and the caveats the numbers need.

Caveats: short runs show a training-speed benefit of depth, not the converged ablation of
Child 2021 (Section 5.2, trained 600k-1.7M steps); a plain EMA at rate 0.999 is dominated by
the first steps of a run of a few thousand; paired intervals, not unpaired ones, decide between
depths (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.report import roles
from harness.report.format import fmt_int, fmt_seconds, is_missing
from harness.report.load import Results, provenance_lines
from harness.published import CONTEXT_NOTE

# The paper trained 600k-1.7M steps; anything under this is far from converged.
SHORT_RUN_STEPS = 100_000


@dataclass
class Overview:
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, text)
    caveats: list[str] = field(default_factory=list)


def _steps(results: Results) -> float | None:
    steps = results.summary.loc[~roles.is_codec(results.summary), "steps"].dropna()
    if len(steps):
        return float(steps.max())
    found = [pd.to_numeric(files.train_log["step"], errors="coerce").max()
             for files in results.cells.values() if "step" in files.train_log.columns]
    found = [s for s in found if not pd.isna(s)]
    return float(max(found)) if found else None


def report_subject(summary: pd.DataFrame) -> str:
    """What the results compare, from their columns: 'VDVAE depth vs Gated PixelCNN', 'VDVAE
    evaluation' (only untrained weights), or the models' names."""
    models = summary[~roles.is_codec(summary)]
    names = list(dict.fromkeys(roles.labels(models)))
    steps = models["steps"].dropna()
    if len(steps) and steps.max() == 0:
        return f"{', '.join(names) or 'model'} evaluation of given weights"
    swept = roles.depth_cells(summary)
    if swept["effective_depth"].nunique() >= 2:
        others = [n for n in dict.fromkeys(roles.labels(roles.other_models(summary)))]
        subject = f"{roles.depth_label(summary)} effective depth"
        return subject + (f" vs {', '.join(others)}" if others else "")
    return " vs ".join(names) or "results"


def build_overview(results: Results, paired: pd.DataFrame) -> Overview:
    summary = results.summary
    overview = Overview(title=f"{results.experiment}: {report_subject(summary)}")
    statuses = summary["status"].fillna("unknown").value_counts()
    datasets = sorted(summary["dataset"].dropna().unique())
    overview.facts.append(("results", str(results.root)))
    overview.facts.append(("dataset", ", ".join(datasets) or "not recorded"))
    overview.facts.append(("cells", f"{len(summary)} ("
                           + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + ")"))
    wall = summary["wall_s"].dropna()
    overview.facts.append(("total compute",
                           f"{fmt_seconds(wall.sum())} ({wall.sum():,.0f} s, the sum of wall_s "
                           f"over {len(wall)} cells)" if len(wall) else "not recorded"))
    steps = _steps(results)
    overview.facts.append(("training steps", "not recorded" if steps is None
                           else f"at most {fmt_int(steps)} per cell"))
    provenance = provenance_lines(results)
    for key, label in (("machine", "machine"), ("device", "device"), ("versions", "versions"),
                       ("git", "git revision")):
        overview.facts.append((label, "; ".join(provenance[key]) or "not recorded"))

    caveats = overview.caveats
    vdvae = roles.depth_cells(summary)
    if steps == 0:
        caveats.append("Evaluation only: these weights were not trained here (0 training "
                       "steps); the figures describe the given weights.")
    elif steps is None or steps < SHORT_RUN_STEPS:
        budget = "an unrecorded number of" if steps is None else f"at most {fmt_int(steps)}"
        caveats.append(
            f"Short runs: {budget} training steps per cell, where the paper trained 600k-1.7M. "
            "The models are far from converged, so a depth trend here is a training-speed "
            "benefit of depth at equal parameters and steps, not the converged result of the "
            "paper's ablation.")
    if "ema" in set(vdvae["weights"].dropna()) or vdvae["test_bits_per_dim_ema"].notna().any():
        caveats.append(
            "EMA weights: 'ema' rows use the bias-corrected EMA. A plain EMA with rate 0.999 is "
            "dominated by the first steps of a run this short and ranks depths at random; each "
            "table row and figure names the weights it uses.")
    seeds_per_depth = vdvae[vdvae["test_bits_per_dim"].notna()].groupby("effective_depth")[
        "seed"].nunique()
    if len(seeds_per_depth) and seeds_per_depth.max() <= 1:
        caveats.append("One seed per depth: run-to-run noise is unknown, and neighbouring "
                       "depths may tie.")
    elif len(seeds_per_depth):
        caveats.append("Several seeds at some depths: compare the spread between seeds "
                       "(depth table) with the paired differences before reading a trend.")
    if len(paired):
        caveats.append("Decide between depths with the paired differences (same test images); "
                       "the unpaired 95% intervals of the summary are much wider.")
    failed = summary[summary["status"].fillna("") != "done"]
    if len(failed):
        caveats.append(f"{len(failed)} cell(s) not done: "
                       + ", ".join(f"{c} ({'unknown' if is_missing(s) else s})"
                                   for c, s in zip(failed["cell"], failed["status"]))
                       + "; their rows have no results.")
    if len(datasets) > 1:
        caveats.append("Several datasets: numbers are comparable only within one dataset.")
    caveats.append(CONTEXT_NOTE)
    return overview
