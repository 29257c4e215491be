"""The rate each resolution of the top-down path carries (Child 2021, Section 5.2: global
structure at low resolution first, local detail at higher resolutions): the KL of every block at
resolution r summed, from the likelihood pass's per-layer KL (no new pass).

Rows `rate_bits_per_dim_at_resolution` (bits per image dimension) and
`rate_share_at_resolution` (its share of the total rate), each with `resolution` (the blocks'
feature-map size) and `layers` (how many blocks sit there). The distortion is the
`distortion_bits_per_dim` row of the same weights."""

from __future__ import annotations

import math

from harness.engine.studies.base import LIKELIHOOD, Study, StudyContext, register
from models import registry
from models.likelihoods import nats_to_bits


def run(context: StudyContext) -> list[dict]:
    per_layer = context.likelihood.get("kl_nats_per_layer")  # (N, L) nats per image
    if per_layer is None:
        return []
    resolutions = context.model.block_resolutions()
    assert len(resolutions) == per_layer.shape[1], (len(resolutions), per_layer.shape)
    dims = math.prod(context.images.shape[1:])
    layer_bits = nats_to_bits(per_layer / dims).mean(axis=0)  # (L,) bits per dim
    total = float(layer_bits.sum())
    rows = []
    for resolution in sorted(set(resolutions)):
        members = [i for i, r in enumerate(resolutions) if r == resolution]
        value = float(layer_bits[members].sum())
        shared = {"resolution": resolution, "layers": len(members), **context.base}
        rows.append({"metric": "rate_bits_per_dim_at_resolution", "value": value, **shared})
        rows.append({"metric": "rate_share_at_resolution",
                     "value": value / total if total > 0 else float("nan"), **shared})
    return rows


STUDY = register(Study(
    name="bits_by_resolution", scope="weights", run=run,
    needs=frozenset({registry.KL_PER_LAYER, registry.LATENTS}), reads=frozenset({LIKELIHOOD}),
    writes=("rate_bits_per_dim_at_resolution", "rate_share_at_resolution"),
    description="the rate each resolution carries, as a share of the total"))
