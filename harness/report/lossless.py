"""Bits/dim as bytes on disk: the lossless codec studies' rows (a real file from each model:
range coding with an autoregressive model, bits-back ANS with a hierarchical VAE), beside the
PNG and WebP reference cells. docs/lossless.md describes the codecs."""

from __future__ import annotations

import pandas as pd

from harness.report import roles
from harness.report.format import MISSING, Table, fmt_fixed, fmt_int, fmt_rate, is_missing
from harness.report.tables import sort_cells

CODEC_LABELS = {"range-autoregressive": "range coding", "bits-back-ans": "bits-back ANS"}


def codec_frame(metrics: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per model cell with codec rows: codec, n, real and model bits/dim, overhead,
    initial bits, speeds, round trip."""
    rows = metrics[metrics["metric"].astype(str).str.startswith("codec_")
                   | (metrics["metric"] == "model_bits_per_dim")]
    rows = rows[rows["cell"].isin(summary.loc[~roles.is_codec(summary), "cell"])]
    if not len(rows):
        return pd.DataFrame()
    records = []
    labels = dict(zip(summary["cell"], roles.labels(summary)))
    depth = summary.set_index("cell")["effective_depth"]
    for cell in [c for c in sort_cells(summary)["cell"] if c in set(rows["cell"])]:
        own = rows[rows["cell"] == cell]

        def value(metric, **where):
            chosen = own[own["metric"] == metric]
            for key, wanted in where.items():
                chosen = chosen[chosen[key] == wanted]
            return chosen["value"].iloc[0] if len(chosen) else None

        first = own.iloc[0]
        records.append({
            "cell": cell, "model_label": labels.get(cell, cell),
            "effective_depth": depth.get(cell), "codec": first.get("codec"),
            "n_images": first.get("n_images"), "batch_size": first.get("batch_size"),
            "codec_bits_per_dim": value("codec_bits_per_dim"),
            "codec_file_bits_per_dim": value("codec_file_bits_per_dim"),
            "model_bits_per_dim": value("model_bits_per_dim"),
            "codec_overhead_percent": value("codec_overhead_percent"),
            "codec_initial_bits": value("codec_initial_bits"),
            "initial_bits_per_image_10k": value("codec_initial_bits_per_image",
                                                amortized_over=10_000)
            if "amortized_over" in own.columns else None,
            "codec_encode_images_per_s": value("codec_encode_images_per_s"),
            "codec_decode_images_per_s": value("codec_decode_images_per_s"),
            "codec_roundtrip_exact": value("codec_roundtrip_exact")})
    return pd.DataFrame(records)


def codec_table(metrics: pd.DataFrame, summary: pd.DataFrame) -> Table | None:
    data = codec_frame(metrics, summary)
    if not len(data):
        return None
    references = roles.codecs(summary)
    reference_text = "; ".join(f"{label} {fmt_fixed(v)}" for label, v in
                               zip(roles.labels(references), references["test_bits_per_dim"]))
    display = pd.DataFrame({
        "cell": data["cell"],
        "model": data["model_label"],
        "depth": data["effective_depth"].map(fmt_int),
        "codec": data["codec"].map(lambda c: CODEC_LABELS.get(c, str(c))),
        "images": data["n_images"].map(fmt_int),
        "model bits/dim": data["model_bits_per_dim"].map(fmt_fixed),
        "file bits/dim": data["codec_bits_per_dim"].map(fmt_fixed),
        "overhead": data["codec_overhead_percent"].map(
            lambda v: MISSING if is_missing(v) else f"{v:+.2f}%"),
        "initial bits": data["codec_initial_bits"].map(fmt_int),
        "… per image over 10k": data["initial_bits_per_image_10k"].map(
            lambda v: fmt_fixed(v, 1)),
        "encode images/s": data["codec_encode_images_per_s"].map(fmt_rate),
        "decode images/s": data["codec_decode_images_per_s"].map(fmt_rate),
        "bit-exact": data["codec_roundtrip_exact"].map(
            lambda v: MISSING if is_missing(v) else ("yes" if v == 1 else "NO")),
    })
    caption = ("Real files: each model codes its first test images losslessly (range coding "
               "with an autoregressive model's exact categoricals; bits-back ANS with a "
               "hierarchical VAE's latents, Townsend et al. 2019). File bits/dim is the "
               "marginal rate once the bits-back chain runs; its one-off initial bits are "
               "given alone and amortized over 10,000 images. Model bits/dim: the model's "
               "bound on the same images. Decode images/s is the paper's sampling-speed claim "
               "turned into decompression. Reference codecs on every test image: "
               f"{reference_text or 'none in this run'}.")
    return Table("lossless_codecs", "Bits/dim as bytes on disk: lossless codecs from the models",
                 data, display, ("l", "l", "r", "l") + ("r",) * 9, caption)
