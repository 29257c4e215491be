"""Experiment files (`experiments/*.yaml`) → a frozen `ExperimentConfig`, strictly.

The schema (every section and field) is harness.experiment.schema; this module reads a file
(harness.experiment.yaml_loader), applies overrides, checks what spans sections (families,
presets, sweep keys, `match` targets) and expands the sweep (harness.experiment.sweep).

Sweep keys name a model config field, `seed`, or `train.<field>` / `eval.<field>`.
Precedence, lowest first: dataclass defaults < the file (experiment-wide `train:`/`eval:`, then the
model's own `train:`/`eval:`) < the sweep point < smoke overrides < `--set KEY=VALUE`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from harness.checks import INT_LIMIT, describe, field_types
from harness.data import dataset_names
from harness.data.paths import primary_root
from harness.engine.config import EvalConfig, TrainConfig
from harness.errors import UserError, closest
from harness.experiment.schema import (
    TOP_LEVEL, Codec, DataSpec, ExperimentConfig, ModelSpec, RunnerSpec, SpeedSpec,
)
from harness.experiment.sweep import expand
from harness.experiment.yaml_loader import (
    Document, Keys, build_dataclass, check_keys, coerce, dotted, load_document, parse_override,
    split_dotted,
)
from harness.plain import to_plain
from models import registry

# Used with fullmatch: `match` with `$` would accept a trailing newline ("x\n").
_MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,47}")


def check_section_overrides(cls: type, mapping: Any, doc: Document, keys: Keys) -> dict:
    """A partial mapping of `cls` fields (e.g. a model's `train:` overrides): keys and types."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise UserError(f"{doc.where(keys)}: '{dotted(keys)}' must be a mapping of "
                        f"{cls.__name__} fields, got {describe(mapping)}")
    types_ = field_types(cls)
    check_keys(mapping, types_, doc, keys)
    return {name: coerce(value, types_[name], doc, keys + (name,))
            for name, value in mapping.items()}


# --------------------------------------------------------------------------- loading


def _apply_overrides(doc: Document, overrides: list[str]) -> tuple[bool, set]:
    """Apply smoke overrides (when smoke is on) then `--set` ones; return (smoke, keys set)."""
    parsed = [(parse_override(text), f"--set {text}") for text in overrides]
    for (keys, _value), origin in parsed:
        if keys[0] not in TOP_LEVEL:
            hint = closest(str(keys[0]), TOP_LEVEL)
            suggestion = f" — did you mean '{hint}'?" if hint else \
                f". Valid top-level keys: {', '.join(TOP_LEVEL)}"
            raise UserError(f"{origin}: unknown key '{dotted(keys)}'{suggestion}")
    smoke, smoke_origin = doc.get(("smoke",), False), doc.where(("smoke",))
    for (keys, value), origin in parsed:
        if keys == ("smoke",):
            smoke, smoke_origin = value, origin
    if not isinstance(smoke, bool):
        raise UserError(f"{smoke_origin}: 'smoke' must be true or false, got {describe(smoke)}")
    # Model names are the user's: an override naming one that is not there is a typo.
    models = doc.get(("models",))
    closed = {("models",): list(models)} if isinstance(models, dict) else {}
    overridden: set = set()
    if smoke:
        smoke_overrides = doc.mapping(("smoke_overrides",), "dotted keys to values") or {}
        for key, value in smoke_overrides.items():
            keys = _split_key(str(key), doc, ("smoke_overrides", key))
            origin = f"{doc.where(('smoke_overrides', key))} (smoke_overrides)"
            if keys[0] not in TOP_LEVEL or keys[0] in ("smoke", "smoke_overrides"):
                raise UserError(f"{origin}: unknown key '{key}'" + (
                    f" — did you mean '{closest(str(keys[0]), TOP_LEVEL)}'?"
                    if closest(str(keys[0]), TOP_LEVEL) else ""))
            doc.apply_override(keys, value, origin, closed)
            overridden.add(keys)
    for (keys, value), origin in parsed:
        doc.apply_override(keys, value, origin, closed)
        overridden.add(keys)
    return smoke, overridden


def _check_integer_sizes(doc: Document, node: Any, keys: Keys) -> None:
    """No integer anywhere in the file (model configs, dataset options, sweep values included)
    beyond 64 bits: torch sizes and seeds are C integers, and a bigger one fails deep inside."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_integer_sizes(doc, value, keys + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_integer_sizes(doc, value, keys + (index,))
    elif isinstance(node, int) and not isinstance(node, bool) and not (
            -INT_LIMIT <= node < INT_LIMIT):
        raise UserError(f"{doc.where(keys)}: '{dotted(keys)}' must be an integer that fits in "
                        f"64 bits (below 2^63), got {describe(node)}")


def _split_key(key: str, doc: Document, keys: Keys) -> Keys:
    try:
        return split_dotted(key)
    except UserError as error:
        raise UserError(f"{doc.where(keys)}: {error}") from None


def _load_models(doc: Document, data: DataSpec | None) -> dict[str, ModelSpec]:
    raw = doc.get(("models",))
    if raw is None:
        raise UserError(f"{doc.source}: no 'models' section: an experiment needs at least one "
                        "model (see experiments/smoke.yaml)")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{doc.where(('models',))}: 'models' must be a mapping of model names to "
                        f"model sections, got {describe(raw)}")
    models: dict[str, ModelSpec] = {}
    for name, section in raw.items():
        keys = ("models", name)
        if (not isinstance(name, str) or not _MODEL_NAME.fullmatch(name)
                or name.startswith("codec")):
            raise UserError(f"{doc.where(keys)}: model name {name!r} must start with a letter "
                            "and use only letters, digits, '_' and '-' (at most 48; not "
                            "'codec...', which names codec rows); it names result folders")
        if isinstance(section, dict) and "family" in section and isinstance(section["family"], str):
            try:
                registry.get(section["family"])
            except ValueError as error:
                raise UserError(f"{doc.where(keys + ('family',))}: {error}") from None
        spec = build_dataclass(ModelSpec, section, doc, keys, name=name)
        if spec.data is not None:
            _check_dataset_name(spec.data, doc, keys + ("data",))
        if spec.checkpoint is not None:
            spec = dataclasses.replace(spec, checkpoint=resolve_checkpoint(spec.checkpoint,
                                                                           doc.source))
        family = registry.get(spec.family)
        if spec.preset is not None:
            try:
                family.preset(spec.preset)
            except ValueError as error:
                raise UserError(f"{doc.where(keys + ('preset',))}: {error}") from None
        check_keys(spec.config, family.config_fields(), doc, keys + ("config",))
        check_section_overrides(TrainConfig, spec.train, doc, keys + ("train",))
        check_section_overrides(EvalConfig, spec.eval, doc, keys + ("eval",))
        _check_sweep_keys(spec, family, doc, keys + ("sweep",))
        if spec.kind == "train" and data is None and spec.data is None:
            raise UserError(f"{doc.where(keys)}: model '{name}' is trained (kind: train) but the "
                            "file has no 'data' section naming a dataset (nor has the model its "
                            "own 'data:')")
        models[name] = spec
    for name, spec in models.items():
        if spec.match is not None and spec.match.params_of is not None:
            target = spec.match.params_of
            where = doc.where(("models", name, "match", "params_of"))
            if target not in models:
                hint = closest(target, [m for m in models if m != name])
                raise UserError(f"{where}: unknown model '{target}'"
                                + (f" — did you mean '{hint}'?" if hint else
                                   f". Models in this file: {', '.join(models)}"))
            if target == name or (models[target].match is not None
                                  and models[target].match.params_of is not None):
                raise UserError(f"{where}: '{name}' cannot match the parameter count of "
                                f"'{target}', which is itself matched to another model; "
                                "match both to a number ('params') instead")
    return models


def resolve_checkpoint(text: str, source: Path | str) -> str:
    """A model entry's `checkpoint:` as an absolute path: `~` and environment variables expand
    (`$HARNESS_DATA` to the harness data directory even when unset), a relative path is relative
    to the experiment file's folder."""
    text = text.replace("${HARNESS_DATA}", "$HARNESS_DATA")
    if "$HARNESS_DATA" in text and "HARNESS_DATA" not in os.environ:
        text = text.replace("$HARNESS_DATA", str(primary_root(None)))
    path = Path(os.path.expandvars(text)).expanduser()
    if not path.is_absolute():
        path = Path(source).resolve().parent / path
    return str(path)


def sweep_key_choices(family: registry.Family) -> list[str]:
    return (family.config_fields() + ["seed"] + [f"train.{f}" for f in field_types(TrainConfig)]
            + [f"eval.{f}" for f in field_types(EvalConfig)])


def _check_sweep_keys(spec: ModelSpec, family: registry.Family, doc: Document,
                      keys: Keys) -> None:
    choices = sweep_key_choices(family)
    entries = [(("grid", k), k) for k in spec.sweep.grid]
    for index, point in enumerate(spec.sweep.points):
        if not isinstance(point, dict):
            raise UserError(f"{doc.where(keys + ('points', index))}: each sweep point must be a "
                            f"mapping of keys to values, got {describe(point)}")
        entries += [(("points", index, k), k) for k in point]
    for path, key in entries:
        if key not in choices:
            hint = closest(str(key), choices)
            suggestion = f" — did you mean '{hint}'?" if hint else (
                ". Sweep keys are model config fields, 'seed', 'train.<field>' or 'eval.<field>'")
            raise UserError(f"{doc.where(keys + path)}: unknown sweep key '{key}' for "
                            f"{spec.family} model '{spec.name}'{suggestion}")
    for key, values in spec.sweep.grid.items():
        if not isinstance(values, list):
            raise UserError(f"{doc.where(keys + ('grid', key))}: grid axis '{key}' must be a "
                            f"list of values, got {describe(values)}")
    if spec.match is not None:
        matched = family.size_field
        if matched is None:
            solvable = [n for n in registry.names() if registry.get(n).size_field]
            raise UserError(f"{doc.where(keys[:-1] + ('match',))}: family '{spec.family}' has "
                            "no size field to solve for a parameter budget; 'match' works for "
                            + ", ".join(solvable))
        if matched in spec.config:
            raise UserError(f"{doc.where(keys[:-1] + ('config', matched))}: '{matched}' is both "
                            f"set and solved by 'match' for model '{spec.name}'; drop one")
        for path, key in entries:
            if key == matched:
                raise UserError(f"{doc.where(keys + path)}: cannot sweep '{matched}' of model "
                                f"'{spec.name}': 'match' solves it for a parameter budget")


def _load_data(doc: Document) -> DataSpec | None:
    raw = doc.get(("data",))
    if raw is None:
        return None
    spec = build_dataclass(DataSpec, raw, doc, ("data",))
    _check_dataset_name(spec, doc, ("data",))
    return spec


def _check_dataset_name(spec: DataSpec, doc: Document, keys: Keys) -> None:
    names = list(dataset_names())
    if spec.dataset not in names:
        hint = closest(spec.dataset, names)
        raise UserError(f"{doc.where(keys + ('dataset',))}: unknown dataset '{spec.dataset}'."
                        + (f" Did you mean '{hint}'?" if hint else "")
                        + f" Valid: {', '.join(sorted(names))}")


def load_experiment(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment file; every problem is a one-line `UserError`.

    The returned config already holds its expanded, validated cells
    (`harness.experiment.sweep.expand`).
    """
    path = Path(path)
    doc = load_document(path)
    overrides = tuple(overrides or ())
    smoke, override_keys = _apply_overrides(doc, list(overrides))
    check_keys(doc.data, TOP_LEVEL, doc, ())
    _check_integer_sizes(doc, doc.data, ())

    name = doc.get(("name",), path.stem)
    name = coerce(name, str, doc, ("name",))
    if not _MODEL_NAME.fullmatch(name):
        raise UserError(f"{doc.where(('name',))}: experiment name {name!r} must start with a "
                        "letter and use only letters, digits, '_' and '-' (it names folders)")
    if smoke:
        name = f"{name}_smoke"  # never mixes with (or overwrites) the full run's results
    description = coerce(doc.get(("description",), ""), str, doc, ("description",))
    data = _load_data(doc)
    train = build_dataclass(TrainConfig, doc.get(("train",)), doc, ("train",))
    evaluation = build_dataclass(EvalConfig, doc.get(("eval",)), doc, ("eval",))
    models = _load_models(doc, data)
    codecs = coerce(doc.get(("codecs",), []) or [], tuple[Codec, ...], doc, ("codecs",))
    if codecs and data is None:
        raise UserError(f"{doc.where(('codecs',))}: codec rows need a 'data' section (they "
                        "compress the same test images the models are scored on)")
    if len(set(codecs)) != len(codecs):
        raise UserError(f"{doc.where(('codecs',))}: a codec is listed twice: {list(codecs)}")
    speed_raw = doc.get(("sampling_speed",))
    speed = None if speed_raw is None else build_dataclass(SpeedSpec, speed_raw, doc,
                                                           ("sampling_speed",))
    if speed is None and any(m.kind == "speed" for m in models.values()):
        raise UserError(f"{doc.where(('models',))}: models with kind 'speed' need a "
                        "'sampling_speed' section (batch sizes, repeats)")
    runner = build_dataclass(RunnerSpec, doc.get(("runner",)), doc, ("runner",))
    doc.mapping(("smoke_overrides",), "dotted keys to values")
    record = to_plain(doc.data)
    record["name"] = name
    experiment = ExperimentConfig(
        name=name, path=path, description=description, data=data, models=models, train=train,
        eval=evaluation, codecs=tuple(codecs), sampling_speed=speed, runner=runner, smoke=smoke,
        overrides=overrides, record=record)
    cells = expand(experiment, doc, frozenset(override_keys))
    return dataclasses.replace(experiment, cells=cells)


__all__ = ["load_experiment", "sweep_key_choices"]
