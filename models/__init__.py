"""Model families and likelihood math. Knows nothing about files, YAML or datasets.

Every family implements the small interface the harness talks to (see `models.registry`):
`model.loss(images_uint8) -> dict` with a (N,) `loss_nats_per_dim`, `model.sample(n, ...)`,
and a frozen-dataclass `model.config`.
"""

# Importing the package registers the shipped families: each family module ends with
# `registry.register(...)`. The registry itself imports no family, so there is no cycle.
from models import pixelcnn, vdvae  # noqa: E402,F401
