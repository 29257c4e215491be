"""The importance-weighted NLL bound (Burda et al. 2016, Eq. 8) with `eval.iw_k` samples on the
first `eval.iw_max_images` test images: `iw_bits_per_dim` ± 95% CI, per-image values in
`per_image_iw_bits_per_dim_<weights>.npy`. Never above the ELBO in expectation."""

from __future__ import annotations

from harness.contract import ci95
from harness.engine import throughput
from harness.engine.artifacts import save_npy
from harness.engine.eval_progress import PhaseProgress
from harness.engine.passes import iw_pass
from harness.engine.studies.base import Study, StudyContext, register
from models import registry


def _n_images(config, n_test: int) -> int:
    return n_test if config.iw_max_images is None else min(n_test, config.iw_max_images)


def run(context: StudyContext) -> list[dict]:
    config, images = context.config, context.images
    n = images.shape[0]
    n_iw = _n_images(config, n)
    subset = images if n_iw == n else images[:n_iw]
    batch_size = config.batch_size_on(throughput.model_device(context.model).type)
    with PhaseProgress(context.label, f"IW bound k={config.iw_k} ({context.weights} weights)",
                       n_iw, enabled=context.show_progress) as progress:
        values = iw_pass(context.model, subset, config.iw_k, config.iw_chunk_size, batch_size,
                         config.noise_seed, progress=progress.update)
    save_npy(values, context.out_dir / f"per_image_iw_bits_per_dim_{context.weights}.npy")
    shared = {"k": config.iw_k, "n_images": n_iw, **context.base}
    return [{"metric": "iw_bits_per_dim", "value": float(values.mean()), **shared},
            {"metric": "iw_bits_per_dim_ci95", "value": ci95(values), **shared}]


STUDY = register(Study(
    name="importance_weighted", scope="weights", run=run, needs=frozenset({registry.IW_NLL}),
    writes=("iw_bits_per_dim", "iw_bits_per_dim_ci95", "per_image_iw_bits_per_dim_<weights>.npy"),
    description="the importance-weighted NLL bound",
    enabled=lambda config: config.iw_k > 0,
    estimate_s=lambda cost, config: (_n_images(config, cost.n_test) * config.iw_k
                                     * cost.forward_s)))
