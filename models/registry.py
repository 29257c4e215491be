"""The model interface: one `Family` record per model family, in a name-keyed registry.

The harness talks to every family through its `Family` alone and inspects nothing else (no
signatures, no `hasattr`). A family module ends with `register(Family(...))`; a test can register a
toy family the same way. What a family declares:

* `config_cls` (a frozen dataclass) and `presets` (name -> config fields);
* `model_cls(config)`, an `nn.Module` with
  - `loss(images)`: uint8 (N, C, H, W) -> dict of tensors, always with `loss_nats_per_dim` (N,),
    the per-image objective training minimises and evaluation reports (negative ELBO for a VAE,
    exact NLL for an autoregressive model); other (N,) `*_nats_per_dim` and (N, L)
    `*_nats_per_layer` entries are evaluated too;
  - `sample(n, generator=None, **sampler.kwargs)`: uint8 images (n, C, H, W);
* `image_shape(config)`: (C, H, W) of the images the config models;
* `samplers`: how the family samples (the rows' `method`), e.g. VAE `ancestral` at a temperature,
  autoregressive `naive` and `cached`; `autoregressive` when a sample call runs the network once
  per sub-pixel;
* `size_field` and `solve_size(target_params, **other_fields) -> value`: what `match:` solves;
* `effective_depth(config)`: G of a hierarchical VAE (None for other families);
* `resize(config, size)`: the config at another image size (for the plan's sampling estimate);
* `load_weights(model, state_dict)`: load a state dict in the family's released-checkpoint
  naming (VDVAE: the reference's names, which are ours); default `model.load_state_dict(strict)`;
* `reference_presets`: the presets whose released checkpoints exist (a checkpoint that does not
  fit the configured model is compared against their key shapes to say which one it looks like);
* optional capabilities, declared: `IW_NLL` (`model.iw_nll_bits_per_dim(images, k,
  chunk_size=)`), `KL_PER_LAYER` (a `kl_nats_per_layer` loss entry), `ACTIVE_UNITS`
  (`model.loss(images, posterior_means=True)` adds `posterior_means`: a list of (N, zdim, R, R)
  posterior means μ_q, one per latent layer, at the pass's own sampled path; the other entries
  as without it), `ACTIVATION_CHECKPOINTING`
  (`model.use_activation_checkpointing(enabled)`: recompute blocks in backward), `LATENTS`
  (latents in and out of a hierarchical VAE, one latent tensor per stochastic block:
  - `model.block_resolutions()`: the resolution R_j of every block, in order, non-decreasing;
  - `model.encode(images, generator=None)`: one posterior draw z_j (N, zdim, R_j, R_j) per
    block, along the sampled path;
  - `model.decode(latents, n=None, temperature=1.0, generator=None, return_latents=False)`:
    likelihood parameters; the first len(latents) blocks use the given latents verbatim, the
    rest draw from the prior with std × temperature (one value or one per block; 0: the prior
    mean); `return_latents=True` also returns every latent used;
  - `model.params_to_images(params, pixel_temperature=1.0, generator=None)`: uint8 images;
    pixel temperature 0 is the deterministic mode).

Lookup errors are `ValueError`s listing the valid names; the harness turns them into user errors.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Capabilities are open: plain strings. These are the ones the families and studies of this
# repository use; a new family or study declares its own string next to the code that needs it.
IW_NLL = "iw_nll"
KL_PER_LAYER = "kl_per_layer"
ACTIVE_UNITS = "active_units"
ACTIVATION_CHECKPOINTING = "activation_checkpointing"
LATENTS = "latents"


@dataclass(frozen=True)
class Sampler:
    """One way a family samples: `method` names it in the rows, `kwargs` go to `model.sample`;
    `temperature` says whether `kwargs` holds a temperature that a speed cell may set."""

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    temperature: bool = False


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    model_cls: type
    image_shape: Callable[[Any], tuple[int, int, int]]
    samplers: tuple[Sampler, ...]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    autoregressive: bool = False
    size_field: str | None = None
    solve_size: Callable[..., int] | None = None
    effective_depth: Callable[[Any], int | None] = lambda config: None
    capabilities: frozenset[str] = frozenset()
    # The same architecture at another image size (the plan times an autoregressive sampler at
    # 4×4 and 8×8 and extrapolates); None: the plan uses an upper bound instead.
    resize: Callable[[Any, int], Any] | None = None
    # Loads a state dict named as the family's released checkpoints are (after the harness has
    # checked every key and shape against the model); None: `model.load_state_dict(strict=True)`.
    load_weights: Callable[[Any, dict], None] | None = None
    reference_presets: tuple[str, ...] = ()
    # How reports name the family ("Gated PixelCNN"); default: `name`.
    display_name: str = ""

    def __post_init__(self):
        assert dataclasses.is_dataclass(self.config_cls), self.config_cls
        assert self.samplers, f"family {self.name} declares no sampler"
        assert (self.size_field is None) == (self.solve_size is None), self.name
        assert all(isinstance(c, str) and c for c in self.capabilities), self.capabilities
        assert set(self.reference_presets) <= set(self.presets), self.name

    @property
    def label(self) -> str:
        return self.display_name or self.name

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def sampler(self, method: str) -> Sampler:
        for sampler in self.samplers:
            if sampler.method == method:
                return sampler
        raise _unknown(f"{self.name} sampler", method, [s.method for s in self.samplers])

    def config_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config_cls) if f.init]

    def preset(self, name: str) -> dict[str, Any]:
        if name not in self.presets:
            raise _unknown(f"{self.name} preset", name, self.presets)
        return dict(self.presets[name])

    def build_config(self, preset: str | None = None, **overrides: Any):
        """Config dataclass from an optional preset plus field overrides."""
        fields = self.preset(preset) if preset else {}
        valid = set(self.config_fields())
        for key in overrides:
            if key not in valid:
                raise _unknown(f"{self.name} config field", key, valid)
        fields.update(overrides)
        return self.config_cls(**fields)

    def build_model(self, config):
        assert isinstance(config, self.config_cls), (type(config), self.config_cls)
        return self.model_cls(config)

    def count_params(self, config) -> int:
        """Parameters of the model `config` builds, without allocating weights (meta device)."""
        import torch

        try:
            with torch.device("meta"):
                model = self.build_model(config)
        except Exception:  # noqa: BLE001 - a constructor that needs real tensors: build it
            model = self.build_model(config)
        return count_parameters(model)

    def state_dict_shapes(self, config) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor in the state dict of the model `config` builds, without
        allocating weights (meta device)."""
        import torch

        with torch.device("meta"):
            model = self.build_model(config)
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}

    def load_state_dict(self, model, state_dict: dict) -> None:
        """Load `state_dict` (already checked to fit `model`) the family's way."""
        if self.load_weights is not None:
            self.load_weights(model, state_dict)
        else:
            model.load_state_dict(state_dict, strict=True)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


def _unknown(kind: str, name: str, choices) -> ValueError:
    choices = sorted(choices)
    hint = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
    return ValueError(f"unknown {kind} '{name}'.{did_you_mean} Valid: {', '.join(choices)}")


def get(name: str) -> Family:
    """The family registered under `name` (importing the package `models` registers the
    shipped families; see models/__init__.py)."""
    if name not in FAMILIES:
        raise _unknown("model family", name, FAMILIES)
    return FAMILIES[name]


def names() -> list[str]:
    return sorted(FAMILIES)


def build_model(family_name: str, config=None, /, **fields: Any):
    """A model from a config dataclass, or from keyword fields (with optional `preset=`)."""
    family = get(family_name)
    if config is None:
        config = family.build_config(fields.pop("preset", None), **fields)
    return family.build_model(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
