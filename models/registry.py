"""Name-keyed registry of model families.

A family registers its frozen config dataclass and its `nn.Module` class with `@register_family`.
The harness builds models only through `build_model(family, **config_fields)` and talks to them
through this interface, shared by every family:

* `model.config`: the frozen dataclass it was built from.
* `model.loss(images)`: images uint8 (N, C, H, W) -> dict of tensors; always contains
  `loss_nats_per_dim` (N,), the per-image objective that training minimises and evaluation
  reports (negative ELBO for VAEs, exact NLL for autoregressive models). Other (N,) or (N, L)
  entries (e.g. `distortion_nats_per_dim`, `kl_nats_per_layer`) are logged and evaluated too.
* `model.sample(n, generator=None, **kwargs)`: uint8 images (n, C, H, W).
* `model.image_shape`: (C, H, W).
* `PRESETS[family][name]`: dict of config fields for the family's named presets.

Errors here are `ValueError`s with the valid names; the harness turns them into user errors.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

FAMILIES: dict[str, tuple[type, type]] = {}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {}


def register_family(name: str, config_cls: type, presets: dict[str, dict[str, Any]] | None = None):
    """Class decorator: `@register_family("vdvae", VDVAEConfig, PRESETS)` on the model class."""
    assert dataclasses.is_dataclass(config_cls), config_cls

    def decorate(model_cls: type) -> type:
        FAMILIES[name] = (config_cls, model_cls)
        PRESETS[name] = dict(presets or {})
        return model_cls

    return decorate


def _ensure_loaded() -> None:
    # Importing the family modules runs their decorators.
    import models.pixelcnn  # noqa: F401
    import models.vdvae  # noqa: F401


def _unknown(kind: str, name: str, choices) -> ValueError:
    choices = sorted(choices)
    hint = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
    return ValueError(f"unknown {kind} '{name}'.{did_you_mean} Valid: {', '.join(choices)}")


def family(name: str) -> tuple[type, type]:
    """(config class, model class) of a family."""
    _ensure_loaded()
    if name not in FAMILIES:
        raise _unknown("model family", name, FAMILIES)
    return FAMILIES[name]


def config_fields(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(family(name)[0])]


def preset(family_name: str, preset_name: str) -> dict[str, Any]:
    family(family_name)
    presets = PRESETS[family_name]
    if preset_name not in presets:
        raise _unknown(f"{family_name} preset", preset_name, presets)
    return dict(presets[preset_name])


def build_config(family_name: str, preset_name: str | None = None, **overrides: Any):
    """Config dataclass from an optional preset plus field overrides."""
    config_cls, _ = family(family_name)
    fields = preset(family_name, preset_name) if preset_name else {}
    valid = set(config_fields(family_name))
    for key in overrides:
        if key not in valid:
            raise _unknown(f"{family_name} config field", key, valid)
    fields.update(overrides)
    return config_cls(**fields)


def build_model(family_name: str, config=None, /, **fields: Any):
    """Build a model from a config dataclass, or from keyword fields (with optional `preset=`)."""
    config_cls, model_cls = family(family_name)
    if config is None:
        config = build_config(family_name, fields.pop("preset", None), **fields)
    assert isinstance(config, config_cls), (type(config), config_cls)
    return model_cls(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
