"""KL per top-down layer in bits per dim, from the likelihood pass's (N, L) entries.

Every (N, L) `*_nats_per_layer` entry of the loss (nats per image and layer; the VDVAE's
`kl_nats_per_layer`) becomes rows of `*_bits_per_dim` with a `layer` field: its mean over test
images divided by the image's dimensions. The sum over layers is the rate.
"""

from __future__ import annotations

import math

from harness.engine.studies.base import LIKELIHOOD, Study, StudyContext, register
from models import registry
from models.likelihoods import nats_to_bits


def run(context: StudyContext) -> list[dict]:
    dims = math.prod(context.images.shape[1:])
    rows = []
    for key, values in sorted(context.likelihood.items()):
        if values.ndim != 2 or not key.endswith("_nats_per_layer"):
            continue
        metric = key[:-len("_nats_per_layer")] + "_bits_per_dim"
        for layer, value in enumerate(nats_to_bits(values / dims).mean(axis=0)):
            rows.append({"metric": metric, "value": float(value), "layer": layer,
                         **context.base})
    return rows


STUDY = register(Study(
    name="kl_per_layer", scope="weights", run=run, needs=frozenset({registry.KL_PER_LAYER}),
    reads=frozenset({LIKELIHOOD}), writes=("kl_bits_per_dim (per layer)",),
    description="the rate each top-down layer carries, from the likelihood pass"))
