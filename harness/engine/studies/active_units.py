"""Active latent units (Burda et al. 2016, Section 5.2): units whose posterior mean varies
across images, Cov_x(E_q[z]) > threshold, total and per layer.

The posterior means come from the likelihood pass itself (no second pass): block i's
μ_q(z_i | x, z_<i) with z_<i the posterior samples of that pass, i.e. a one-sample unbiased
estimate of E_q[z_i | x] over the upper layers; a mean-path pass (z_<i = μ_q, the VDVAE's
`posterior_means`) would give a deterministic but different value. The sample's noise adds to
the variance across images. `eval.active_units_max_images` bounds the images counted.
"""

from __future__ import annotations

from harness.engine.studies.base import POSTERIOR_MEANS, Study, StudyContext, register
from models import registry


def run(context: StudyContext) -> list[dict]:
    moments, config = context.moments, context.config
    counts = moments.active_units(config.active_unit_threshold)
    shared = {"threshold": config.active_unit_threshold, "n_images": moments.n_images,
              **context.base}
    rows = [{"metric": "active_units", "value": sum(a for a, _ in counts),
             "units": sum(t for _, t in counts), **shared}]
    for layer, (active, total) in enumerate(counts):
        rows.append({"metric": "active_units", "value": active, "layer": layer,
                     "units": total, **shared})
    return rows


STUDY = register(Study(
    name="active_units", scope="weights", run=run, needs=frozenset({registry.ACTIVE_UNITS}),
    reads=frozenset({POSTERIOR_MEANS}), writes=("active_units (total and per layer)",),
    description="latent units whose posterior mean varies across images"))
