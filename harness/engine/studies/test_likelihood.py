"""Test bits/dim over every test image with its 95% interval, and the objective's terms.

`test_bits_per_dim` is the model's `loss_nats_per_dim` in bits: the negative ELBO of a VAE
(VDVAE Section 3: one posterior sample, analytic KL) or the exact NLL of an autoregressive
model; `test_bits_per_dim_ci95` is 1.96 · sd / √N over images. Every other per-image
`*_nats_per_dim` entry of the loss (a VAE's distortion and rate) becomes `*_bits_per_dim`.
The per-image values are kept as `per_image_test_bits_per_dim_<weights>.npy` for paired
comparisons (docs/results.md).
"""

from __future__ import annotations

import numpy as np

from harness.contract import ci95
from harness.engine import throughput
from harness.engine.artifacts import save_npy
from harness.engine.studies.base import LIKELIHOOD, Study, StudyContext, register
from harness.errors import UserError
from models.likelihoods import nats_to_bits


def run(context: StudyContext) -> list[dict]:
    arrays, base = context.likelihood, context.base
    if "loss_nats_per_dim" not in arrays:
        raise UserError(f"model {type(context.model).__name__}.loss returned no (N,) "
                        f"'loss_nats_per_dim'; it cannot be evaluated")
    loss = arrays["loss_nats_per_dim"]
    bits = nats_to_bits(loss)
    save_npy(bits, context.out_dir / f"per_image_test_bits_per_dim_{context.weights}.npy")
    n = context.images.shape[0]
    batch_size = context.config.batch_size_on(throughput.model_device(context.model).type)
    rows = [{"metric": "test_bits_per_dim", "value": float(bits.mean()), "n_images": n, **base},
            {"metric": "test_bits_per_dim_ci95", "value": ci95(bits), "n_images": n, **base},
            {"metric": "eval_images_per_s", "value": context.eval_images_per_s,
             "batch_size": batch_size, **base}]
    for key, values in sorted(arrays.items()):
        if key == "loss_nats_per_dim" or values.ndim != 1 or not key.endswith("_nats_per_dim"):
            continue
        if np.array_equal(values, loss):
            continue  # the objective under another name (a VAE's elbo_nats_per_dim)
        rows.append({"metric": key[:-len("_nats_per_dim")] + "_bits_per_dim",
                     "value": float(nats_to_bits(values).mean()), **base})
    return rows


STUDY = register(Study(
    name="test_likelihood", scope="weights", run=run, reads=frozenset({LIKELIHOOD}),
    writes=("test_bits_per_dim", "test_bits_per_dim_ci95", "eval_images_per_s",
            "<term>_bits_per_dim", "per_image_test_bits_per_dim_<weights>.npy"),
    description="bits/dim over every test image ± 95% CI, and the objective's terms",
    # The likelihood pass itself: one inference forward of every test image.
    estimate_s=lambda cost, config: cost.n_test * cost.forward_s))

