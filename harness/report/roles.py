"""What each cell is to the report, read from columns, never from a family's name.

* depth cells: model cells that carry an `effective_depth` (a depth sweep of any family);
* other models: model cells without one (drawn as reference lines beside a depth sweep);
* codecs: cells of kind `codec` (lossless reference encodings, no parameters).

`model_label` (the family's display name, recorded in each cell's config.json) names them;
results folders written before it existed fall back to the `model` column.
"""

from __future__ import annotations

import pandas as pd


def is_codec(frame: pd.DataFrame) -> pd.Series:
    if "kind" in frame:
        return frame["kind"].fillna("") == "codec"
    return frame["model"].fillna("") == "codec"


def labels(frame: pd.DataFrame) -> pd.Series:
    """Each row's model label (display name), as text."""
    if "model_label" in frame:
        chosen = frame["model_label"].where(frame["model_label"].notna(), frame["model"])
    else:
        chosen = frame["model"]
    return chosen.map(lambda v: "model" if v is None or (isinstance(v, float) and v != v)
                      else str(v))


def evaluated(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["test_bits_per_dim"].notna()]


def depth_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """Model cells with an effective depth (evaluated or not)."""
    return summary[~is_codec(summary) & summary["effective_depth"].notna()]


def other_models(summary: pd.DataFrame) -> pd.DataFrame:
    """Evaluated model cells without an effective depth."""
    return evaluated(summary[~is_codec(summary) & summary["effective_depth"].isna()])


def codecs(summary: pd.DataFrame) -> pd.DataFrame:
    return evaluated(summary[is_codec(summary)])


def depth_label(summary: pd.DataFrame) -> str:
    """'VDVAE' (or 'VDVAE, X'): the models a depth sweep covers."""
    names = sorted(set(labels(depth_cells(summary))))
    return ", ".join(names) if names else "model"
