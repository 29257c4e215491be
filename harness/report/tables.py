"""The report's tables, as pure functions of the result rows.

* `summary_table`: one row per cell (docs/results.md summary.csv), codec cells as reference rows.
* `depth_means_table`: test bits/dim per effective depth, mean and range over seeds.
* `paired_table`: each depth minus the deepest on the same test images (see `stats`).
* `sampling_table`: sampling images/s per resolution, and how much faster the fastest sampler is.
* `published_tables`: the papers' numbers for context (see `published`).
"""

from __future__ import annotations

import pandas as pd

from harness import published
from harness.report.format import (
    MISSING, Table, fmt_fixed, fmt_int, fmt_percent, fmt_rate, fmt_ratio, fmt_si, fmt_text,
    is_missing,
)
from harness.report import roles
from harness.report.load import SUMMARY_COLUMNS

WEIGHTS_NOTE = ("Weights: raw = final weights, ema = bias-corrected EMA weights; `test bits/dim` "
                "comes from the weights named in its row.")


def sort_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """Models with a depth sweep (by depth and seed), then the other models, and codec
    reference rows last; within a model, cells without a dataset (sampling-speed cells) after
    the evaluated ones."""
    codec = roles.is_codec(summary)
    label = roles.labels(summary)
    swept = set(roles.labels(roles.depth_cells(summary)))

    def key(index):
        row = summary.loc[index]
        dataset = "" if is_missing(row["dataset"]) else str(row["dataset"])
        group = 2 if codec[index] else (0 if label[index] in swept else 1)
        return (group, label[index], not dataset, dataset, _number_key(row["effective_depth"]),
                _number_key(row["seed"]), str(row["cell"]))

    return summary.loc[sorted(summary.index, key=key)].reset_index(drop=True)


def _number_key(value) -> tuple[bool, float]:
    """Sort numbers ascending with missing ones last."""
    return (True, 0.0) if is_missing(value) else (False, float(value))


def _bits_with_ci(value, ci) -> str:
    if is_missing(value):
        return MISSING
    return fmt_fixed(value) + ("" if is_missing(ci) else f" ± {fmt_fixed(ci)}")


def _status(row) -> str:
    status = fmt_text(row["status"])
    error = row["error"]
    if status != "done" and not is_missing(error):
        error = str(error)
        status += f" ({error if len(error) <= 48 else error[:47] + '…'})"
    return status


def summary_table(summary: pd.DataFrame) -> Table:
    rows = sort_cells(summary)
    several_datasets = rows["dataset"].dropna().nunique() > 1
    display = pd.DataFrame({
        "cell": rows["cell"].map(fmt_text),
        "model": roles.labels(rows),
        **({"dataset": rows["dataset"].map(fmt_text)} if several_datasets else {}),
        "depth": rows["effective_depth"].map(fmt_int),
        "seed": rows["seed"].map(fmt_int),
        "params": rows["params"].map(fmt_int),
        "test bits/dim (± 95% CI)": [_bits_with_ci(v, c) for v, c in
                                     zip(rows["test_bits_per_dim"],
                                         rows["test_bits_per_dim_ci95"])],
        "weights": rows["weights"].map(fmt_text),
        "IW bits/dim (k)": [MISSING if is_missing(v) else
                            fmt_fixed(v) + ("" if is_missing(k) else f" (k={int(k)})")
                            for v, k in zip(rows["iw_bits_per_dim"], rows["iw_k"])],
        "sampling images/s": rows["sample_images_per_s"].map(fmt_rate),
        "cached images/s": rows["sample_images_per_s_cached"].map(fmt_rate),
        "FLOPs/image": rows["flops_per_image"].map(fmt_si),
        "steps": rows["steps"].map(fmt_int),
        "status": [_status(row) for _, row in rows.iterrows()],
    })
    align = tuple("l" if c in ("cell", "model", "dataset", "weights", "status") else "r"
                  for c in display.columns)
    datasets = ", ".join(sorted(rows["dataset"].dropna().unique())) or "unknown dataset"
    caption = (f"Dataset: {datasets}. {WEIGHTS_NOTE} Sampling: each family's samplers "
               "(`sampling images/s` the first, `cached` an autoregressive model's cached one), "
               "at each cell's own resolution (see the sampling table). Codec rows are lossless "
               "reference encodings, not models.")
    return Table("summary", "Summary: one row per cell", rows[list(SUMMARY_COLUMNS)], display,
                 align, caption)


def depth_means_table(summary: pd.DataFrame) -> Table | None:
    """Evaluated depth cells grouped by dataset, effective depth and weights; None without
    any."""
    vdvae = roles.evaluated(roles.depth_cells(summary))
    if not len(vdvae):
        return None
    records = []
    keys = vdvae.assign(dataset=vdvae["dataset"].fillna(""), weights=vdvae["weights"].fillna(""))
    for (dataset, depth, weights), group in keys.groupby(["dataset", "effective_depth",
                                                          "weights"], sort=True):
        seeds = sorted(int(s) for s in group["seed"].dropna())
        values = group["test_bits_per_dim"]
        records.append({
            "dataset": dataset or None, "effective_depth": depth, "weights": weights or None,
            "n_seeds": len(group), "seeds": " ".join(str(s) for s in seeds),
            "mean_test_bits_per_dim": values.mean(), "min_test_bits_per_dim": values.min(),
            "max_test_bits_per_dim": values.max(),
        })
    data = pd.DataFrame(records)
    display = pd.DataFrame({
        "depth": data["effective_depth"].map(fmt_int),
        "weights": data["weights"].map(fmt_text),
        "seeds": [s if s else MISSING for s in data["seeds"]],
        "mean test bits/dim": data["mean_test_bits_per_dim"].map(fmt_fixed),
        "min – max over seeds": [f"{fmt_fixed(a)} – {fmt_fixed(b)}" if n > 1 else MISSING
                                 for a, b, n in zip(data["min_test_bits_per_dim"],
                                                    data["max_test_bits_per_dim"],
                                                    data["n_seeds"])],
    })
    if data["dataset"].dropna().nunique() > 1:
        display.insert(0, "dataset", data["dataset"].map(fmt_text))
    return Table("depth_means", f"{roles.depth_label(summary)} test bits/dim by effective "
                 "stochastic depth", data,
                 display, tuple("l" if c in ("dataset", "weights", "seeds") else "r"
                                for c in display.columns),
                 "Mean over the seeds run at each depth; the spread between seeds is the only "
                 "measure of run-to-run noise here.")


def paired_table(paired: pd.DataFrame) -> Table | None:
    if not len(paired):
        return None
    display = pd.DataFrame({
        "cell": paired["cell"],
        "depth": paired["effective_depth"].map(fmt_int),
        "seed": paired["seed"].map(fmt_int),
        "minus (deepest)": paired["reference_cell"],
        "pairing": paired["pairing"],
        "weights": paired["weights"],
        "images": paired["n_images"].map(fmt_int),
        "difference bits/dim (± 95% CI)": [
            f"{fmt_fixed(m, sign=True)} ± {fmt_fixed(c)}"
            for m, c in zip(paired["mean_diff_bits_per_dim"], paired["ci95_bits_per_dim"])],
        "deeper better on": paired["fraction_deeper_better"].map(fmt_percent),
    })
    if paired["dataset"].dropna().nunique() > 1:
        display.insert(0, "dataset", paired["dataset"].map(fmt_text))
    return Table("paired_differences", "Paired differences vs the deepest model, same test images",
                 paired, display,
                 tuple("l" if c in ("dataset", "cell", "minus (deepest)", "pairing", "weights")
                       else "r" for c in display.columns),
                 "Per image: shallower minus deepest bits/dim; mean ± 1.96·sd/√N over images. "
                 "Positive = the deeper model is better. Cells pair with the deepest cell of the "
                 "same seed, else seed 0's.")


def sampling_rows(metrics: pd.DataFrame, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Median `sample_images_per_s` over cells per (model, method, image_size, batch_size),
    with the number of cells and their spread ((max - min) / median): cells of one architecture
    should measure alike, so a large spread says the timing, not the model, varied.
    `model_label` names the model (from `summary` when given)."""
    rows = metrics[(metrics["metric"] == "sample_images_per_s") & metrics["value"].notna()]
    columns = ["model", "model_label", "method", "image_size", "batch_size", "images_per_s",
               "n_cells", "cell_spread_fraction"]
    if not len(rows):
        return pd.DataFrame(columns=columns)
    rows = rows.assign(method=rows["method"].fillna(""), model=rows["model"].fillna(""))
    grouped = rows.groupby(["model", "method", "image_size", "batch_size"], dropna=False)
    out = grouped.agg(images_per_s=("value", "median"), n_cells=("cell", "nunique"),
                      low=("value", "min"), high=("value", "max")).reset_index()
    out["cell_spread_fraction"] = (out["high"] - out["low"]) / out["images_per_s"]
    names: dict = {}
    if summary is not None and len(summary):
        names = dict(zip(summary["model"], roles.labels(summary)))
    out["model_label"] = [names.get(m, m) for m in out["model"]]
    return out[columns]


def speed_ratios(sampling: pd.DataFrame) -> pd.DataFrame:
    """At each resolution and the largest batch size measured for more than one sampler: every
    (model, method) with its images/s and how many times faster the fastest sampler is."""
    records = []
    for size in sorted(sampling["image_size"].dropna().unique()):
        at_size = sampling[sampling["image_size"] == size]
        counts = at_size.groupby("batch_size")["method"].count()
        batches = sorted(b for b, n in counts.items() if n > 1) or sorted(counts.index)
        if not batches:
            continue
        chosen = at_size[at_size["batch_size"] == batches[-1]].sort_values(
            "images_per_s", ascending=False)
        fastest = chosen.iloc[0]
        for _, row in chosen.iterrows():
            records.append({
                "image_size": size, "batch_size": batches[-1], "model": row["model"],
                "model_label": row["model_label"], "method": row["method"],
                "images_per_s": row["images_per_s"], "n_cells": row["n_cells"],
                "cell_spread_fraction": row["cell_spread_fraction"],
                "fastest": f"{fastest['model_label']} {fastest['method']}",
                "fastest_speedup": fastest["images_per_s"] / row["images_per_s"]
                if row["images_per_s"] > 0 else float("nan")})
    return pd.DataFrame(records, columns=[
        "image_size", "batch_size", "model", "model_label", "method", "images_per_s", "n_cells",
        "cell_spread_fraction", "fastest", "fastest_speedup"])


def sampling_table(metrics: pd.DataFrame, summary: pd.DataFrame | None = None) -> Table | None:
    ratios = speed_ratios(sampling_rows(metrics, summary))
    if not len(ratios):
        return None
    display = pd.DataFrame({
        "resolution": [f"{int(s)}×{int(s)}" for s in ratios["image_size"]],
        "batch": ratios["batch_size"].map(fmt_int),
        "sampler": [f"{m} {s}" for m, s in zip(ratios["model_label"], ratios["method"])],
        "images/s": ratios["images_per_s"].map(fmt_rate),
        "cells": ratios["n_cells"].map(fmt_int),
        "spread across cells": [MISSING if n < 2 else fmt_percent(f) for n, f in
                                zip(ratios["n_cells"], ratios["cell_spread_fraction"])],
        "fastest is": [MISSING if abs(r - 1) < 1e-12 else f"{fmt_ratio(r)} faster"
                       for r in ratios["fastest_speedup"]],
    })
    return Table("sampling_speed", "Sampling throughput, same device", ratios, display,
                 ("l", "r", "l", "r", "r", "r", "r"),
                 "Median images/s over the cells of one architecture (the speed phase: one "
                 "cell at a time, nothing else running), the spread between those cells, and "
                 "how many times faster the fastest sampler at that resolution and batch is.")


def published_tables() -> list[Table]:
    ablation = pd.DataFrame(published.DEPTH_ABLATION_IMAGENET32,
                            columns=["effective_depth", "test_bits_per_dim"])
    rows = [{"model": m, **dict(zip(published.PUBLISHED_DATASETS, v))}
            for m, v in published.PUBLISHED_BITS_PER_DIM]
    bits = pd.DataFrame(rows, columns=["model", *published.PUBLISHED_DATASETS])
    codecs = pd.DataFrame([{"codec": c, **dict(zip(published.CODEC_DATASETS, v))}
                           for c, v in published.CODEC_BITS_PER_DIM],
                          columns=["codec", *published.CODEC_DATASETS])
    prototype = pd.DataFrame(published.CPU_PROTOTYPE, columns=[
        "effective_depth", "test_bits_per_dim_raw", "ci95_bits_per_dim", "test_bits_per_dim_ema"])

    def fixed_frame(frame: pd.DataFrame, first: str, digits: int = 2) -> pd.DataFrame:
        out = frame.copy()
        for column in out.columns[1:]:
            out[column] = out[column].map(lambda v: fmt_fixed(v, digits))
        out[first] = out[first].map(str)
        return out

    proto_display = pd.DataFrame({
        "G": prototype["effective_depth"].map(str),
        "raw bits/dim": [f"{fmt_fixed(v)} ± {fmt_fixed(c)}" for v, c in
                         zip(prototype["test_bits_per_dim_raw"], prototype["ci95_bits_per_dim"])],
        "EMA 0.999": prototype["test_bits_per_dim_ema"].map(fmt_fixed),
    })
    return [
        Table("published_depth_ablation", "Published: VDVAE depth ablation (ImageNet-32)",
              ablation, pd.DataFrame({"depth": ablation["effective_depth"].map(str),
                                      "bits/dim": ablation["test_bits_per_dim"].map(
                                          lambda v: fmt_fixed(v, 2))}),
              ("r", "r"), published.DEPTH_ABLATION_CAPTION),
        Table("published_bits_per_dim", "Published: test bits/dim", bits,
              fixed_frame(bits, "model"), ("l", "r", "r", "r"), published.PUBLISHED_CAPTION),
        Table("published_codecs", "Published: lossless codecs (bits/dim)", codecs,
              fixed_frame(codecs, "codec"), ("l", "r", "r", "r"), published.CODEC_CAPTION),
        Table("published_cpu_prototype", "Prototype: CPU-scale depth sweep (Fashion-MNIST)",
              prototype, proto_display, ("r", "r", "r"), published.CPU_PROTOTYPE_CAPTION),
    ]
