"""Model weights from a file: released reference checkpoints and the harness's own.

Three layouts are recognised (docs/results.md, "Checkpoint provenance"):

* `reference-ema`: a plain state dict, as the reference's training script writes
  `*-model-ema.th` (the EMA weights, names as in the reference, which are ours);
* `reference-ddp`: a plain state dict whose every key starts with `module.` (the reference's
  `*-model.th`, saved from inside DistributedDataParallel); the prefix is stripped;
* `harness`: a training checkpoint `checkpoints/step-<N>.pt` of this harness (harness.engine.
  checkpoint), holding the raw weights (`model`) and the EMA (`ema`); `raw` or `ema` is chosen.

Every file is read with `torch.load(weights_only=True)`: a pickle that would build any object
other than tensors and plain containers is refused (one line, exit 2) and nothing in it runs.
A state dict that does not fit the configured model is named by its first missing, unexpected
or mis-shaped key, and compared with the family's published presets ("this looks like preset
imagenet32"). All problems are `UserError`s naming the file.
"""

from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.engine.schedule import EMA
from harness.errors import UserError
from models import registry

DDP_PREFIX = "module."


@dataclass(frozen=True)
class WeightsFile:
    """A weights file as read: its tensors by weights name, and its provenance."""

    path: Path
    sha256: str
    layout: str                               # reference-ema | reference-ddp | harness
    state: dict[str, Any]                     # the loaded object
    step: int | None = None                   # a harness checkpoint's training step

    def provenance(self) -> dict[str, Any]:
        return {"file": self.path.name, "path": str(self.path), "sha256": self.sha256,
                "layout": self.layout, "step": self.step}


def read_weights_file(path: Path | str) -> WeightsFile:
    """Read and classify a weights file; one-line `UserError` when it is not usable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"checkpoint {path}: cannot be read ({error.strerror or error}); "
                        "check the path") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, not torch, or unsafe: all refused
        text = " ".join(str(error).split())
        if "Unsupported global" in text or "GLOBAL " in text:
            reason = ("it holds Python objects other than tensors and plain containers, which "
                      "are never unpickled here (torch.load weights_only=True)")
        else:
            first = text.split(". ")[0].removeprefix("Weights only load failed")[:120]
            first = first.strip(" .:")
            reason = (f"not a complete torch file ({type(error).__name__}"
                      + (f": {first})" if first else ")"))
        raise UserError(f"checkpoint {path}: refused: {reason}; use a state dict saved with "
                        "torch.save") from None
    if not isinstance(state, dict) or not state:
        raise UserError(f"checkpoint {path}: holds {type(state).__name__}, not a state dict "
                        "(a mapping of tensor names to tensors) or a harness checkpoint")
    if "step" in state and isinstance(state.get("model"), dict):
        return WeightsFile(path, digest, "harness", state, step=int(state["step"]))
    bad = next((k for k, v in state.items()
                if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise UserError(f"checkpoint {path}: entry {bad!r} is {type(state[bad]).__name__}, not "
                        "a tensor; expected a state dict or a harness training checkpoint")
    if all(k.startswith(DDP_PREFIX) for k in state):
        stripped = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
        return WeightsFile(path, digest, "reference-ddp", stripped)
    return WeightsFile(path, digest, "reference-ema", state)


def state_dict_for(weights_file: WeightsFile, weights: str, model: nn.Module) -> dict:
    """The state dict of `weights` ("raw" or "ema") in the file. A reference file holds one
    set of weights, used for both; a harness checkpoint's EMA is bias-corrected as in training."""
    if weights_file.layout != "harness":
        return weights_file.state
    state = weights_file.state
    if weights == "raw":
        return state["model"]
    if not isinstance(state.get("ema"), dict):
        raise UserError(f"checkpoint {weights_file.path}: has no EMA weights; set "
                        "eval.weights: [raw]")
    holder = copy.deepcopy(model)
    fit_state_dict(holder, state["model"], weights_file.path, None, None)
    ema = EMA(holder, float(state["ema"].get("rate", 0.0)))
    try:
        ema.load_state_dict(state["ema"])
    except (AssertionError, KeyError, RuntimeError) as error:
        raise UserError(f"checkpoint {weights_file.path}: its EMA does not fit the model "
                        f"({' '.join(str(error).split())[:120]})") from None
    return ema.module().state_dict()


def _first_mismatch(own: dict[str, tuple], given: dict[str, tuple]) -> str | None:
    for name in own:
        if name not in given:
            return f"missing key '{name}'"
    for name in given:
        if name not in own:
            return f"unexpected key '{name}'"
    for name, shape in own.items():
        if given[name] != shape:
            return f"key '{name}' has shape {list(given[name])}, the model's is {list(shape)}"
    return None


def looks_like(family: registry.Family, shapes: dict[str, tuple]) -> str | None:
    """The published preset of `family` whose state dict has exactly these names and shapes."""
    for preset in family.reference_presets:
        config = family.build_config(preset)
        if family.state_dict_shapes(config) == shapes:
            return preset
    return None


def _misfit(path: Path, problem: str, family: registry.Family | None, given: dict,
            model_name: str | None) -> UserError:
    preset = looks_like(family, given) if family is not None else None
    hint = (f"; this looks like preset {preset} (harness evaluate --model {preset}; "
            f"'preset: {preset}' in an experiment file)" if preset else "")
    what = f"model '{model_name}'" if model_name else "the configured model"
    return UserError(f"checkpoint {path} does not fit {what}: {problem}{hint}")


def fit_state_dict(model: nn.Module, state_dict: dict, path: Path,
                   family: registry.Family | None, model_name: str | None) -> None:
    """Load `state_dict` into `model` after checking every key and shape; a mismatch is one
    line naming the first bad key and, when it fits a published preset, that preset."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items()}
    problem = _first_mismatch(own, given)
    if problem is not None:
        raise _misfit(path, problem, family, given, model_name)
    if family is not None:
        family.load_state_dict(model, state_dict)
    else:
        model.load_state_dict(state_dict, strict=True)


def load_weights(model: nn.Module, family: registry.Family, weights_file: WeightsFile,
                 weights: str = "raw", model_name: str | None = None) -> nn.Module:
    """`model` with the file's `weights` loaded into it (in place; returned for chaining)."""
    state_dict = state_dict_for(weights_file, weights, model)
    fit_state_dict(model, state_dict, weights_file.path, family, model_name)
    return model


def check_fits(path: Path | str, family: registry.Family, config: Any,
               model_name: str | None = None) -> WeightsFile:
    """Read `path` and check that its (raw) weights fit the model `config` builds, without
    building it (meta device): the run refuses a bad checkpoint before any cell starts."""
    weights_file = read_weights_file(path)
    state = weights_file.state["model"] if weights_file.layout == "harness" else weights_file.state
    given = {k: tuple(v.shape) for k, v in state.items()}
    problem = _first_mismatch(family.state_dict_shapes(config), given)
    if problem is not None:
        raise _misfit(weights_file.path, problem, family, given, model_name)
    return weights_file
