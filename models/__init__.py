"""Model families and likelihood math. Knows nothing about files, YAML or datasets.

Every family implements the small interface the harness talks to (see `models.registry`):
`model.loss(images_uint8) -> dict` with a (N,) `loss_nats_per_dim`, `model.sample(n, ...)`,
and a frozen-dataclass `model.config`.
"""
