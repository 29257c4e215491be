"""Sweep expansion: an `ExperimentConfig` → the cells the runner trains, times or compresses.

A cell is one fully resolved run: model family and config dataclass, training and evaluation
configs, seed. Names are stable and readable (`vdvae_g07_s0`, `pixelcnn_s0`, `codec_png`): the
model's name, then one part per swept key (`g` = effective depth, zero-padded to the widest value
of that sweep, then `<field><value>` for any other key), then `s<seed>` for trained cells.

Parameter matching (`match:`) solves the family's size field for a budget: VDVAE `width` with
`width_for_param_budget`, PixelCNN `channels` with `channels_for_param_budget`; `params_of` takes
the budget from another model's base config (its preset and `config:`, no sweep point).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

from harness.checks import describe
from harness.engine.config import EvalConfig, TrainConfig
from harness.errors import MODEL_BUILD_ERRORS, UserError, first_line
from harness.experiment.schema import Cell, ExperimentConfig, ModelSpec
from harness.experiment.yaml_loader import Document, Keys, construct, dotted
from models import registry

SHORT_NAMES = {"effective_depth": "g", "seed": "s"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+-]+")


def safe_name(name: str) -> str:
    """A string usable as one path component: letters, digits and `_ . , = + -` only, no `..`."""
    name = _UNSAFE.sub("-", str(name)).strip(".")
    while ".." in name:
        name = name.replace("..", ".")
    name = name.lstrip("-.,=+") or "cell"
    return name[:120]


def _format_value(value: Any, width: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:0{width}d}" if value >= 0 else str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "all"
    return str(value)


def _points(sweep, base: Keys) -> list[tuple[dict, dict]]:
    """(point, where each key was given) for the grid's product (first axis slowest), then the
    explicit points; one empty point if the model is not swept."""
    points: list[tuple[dict, dict]] = []
    if sweep.grid:
        axes = list(sweep.grid)
        paths = {a: base + ("grid", a) for a in axes}
        for values in itertools.product(*(sweep.grid[a] for a in axes)):
            points.append((dict(zip(axes, values)), paths))
    for index, point in enumerate(sweep.points):
        points.append((dict(point), {k: base + ("points", index, k) for k in point}))
    return points or [({}, {})]


def _overridden(override_keys: frozenset, *paths: Keys) -> bool:
    """Whether an override (--set or smoke) set any of `paths` or a section above them."""
    for path in paths:
        for n in range(1, len(path) + 1):
            if tuple(path[:n]) in override_keys:
                return True
    return False


def _init_fields(obj: Any) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


# Parameter counts, once per process: building a paper-size model on the meta device to count
# them takes about a second, and every load of a `match:` file (and every dry run) asks again.
_PARAMS_SEEN: dict[tuple, int] = {}


class _Expander:
    def __init__(self, experiment: ExperimentConfig, doc: Document, override_keys: frozenset):
        self.experiment = experiment
        self.doc = doc
        self.overrides = override_keys

    # ----------------------------------------------------------------- model configs

    def base_fields(self, spec: ModelSpec) -> dict:
        fields = registry.get(spec.family).preset(spec.preset) if spec.preset else {}
        fields.update(spec.config)
        return fields

    def field_paths(self, spec, point_paths: dict | None = None) -> dict:
        """Where each model config field was set: preset < config < match < sweep point."""
        family = registry.get(spec.family)
        model: Keys = ("models", spec.name)
        paths: dict = {}
        if spec.preset:
            paths.update({f: model + ("preset",) for f in family.preset(spec.preset)})
        paths.update({f: model + ("config", f) for f in spec.config})
        if spec.match is not None and family.size_field is not None:
            paths[family.size_field] = model + ("match",)
        paths.update({k: v for k, v in (point_paths or {}).items() if "." not in k})
        return paths

    def build_config(self, spec: ModelSpec, fields: dict, paths: dict):
        config_cls = registry.get(spec.family).config_cls
        return construct(config_cls, fields, self.doc, ("models", spec.name), paths)

    def params_of(self, family: str, config: Any, model: str) -> int:
        """Parameters of the model `config` builds (`model`: its name in the file, for errors)."""
        found = registry.get(family)
        key = (family, found.model_cls, repr(config))
        if key not in _PARAMS_SEEN:
            try:
                _PARAMS_SEEN[key] = found.count_params(config)
            except MODEL_BUILD_ERRORS as error:
                raise UserError(f"{self.doc.where(('models', model))}: the {family} model "
                                f"'{model}' cannot be built to count its parameters "
                                f"({first_line(error)}); make it smaller") from None
        return _PARAMS_SEEN[key]

    def solve_match(self, spec: ModelSpec, fields: dict) -> tuple[dict, dict]:
        match = spec.match
        keys = ("models", spec.name, "match")
        if match.params is not None:
            target = match.params
        else:
            other = self.experiment.models[match.params_of]
            other_fields = self.base_fields(other)
            if other.match is not None:
                other_fields, _ = self.solve_match(other, other_fields)
            other_config = self.build_config(other, other_fields, self.field_paths(other))
            target = self.params_of(other.family, other_config, other.name)
        family = registry.get(spec.family)
        field_name = family.size_field  # the loader refused `match` for a family without one
        assert field_name is not None and family.solve_size is not None, spec.family
        try:
            others = {k: v for k, v in fields.items() if k != field_name}
            value = family.solve_size(target, **others)
        except (ValueError, TypeError) as error:
            raise UserError(f"{self.doc.where(keys)}: cannot match {target:,} parameters for "
                            f"model '{spec.name}': {error}") from None
        solved = dict(fields, **{field_name: value})
        config = self.build_config(spec, solved, self.field_paths(spec))
        params = self.params_of(spec.family, config, spec.name)
        if abs(params - target) > match.tolerance * target:
            raise UserError(f"{self.doc.where(keys)}: model '{spec.name}' reaches {params:,} "
                            f"parameters at {field_name}={value}, more than "
                            f"{match.tolerance * 100:.3g}% from the target {target:,}; change "
                            "its other fields or raise match.tolerance")
        return solved, {"field": field_name, "value": value, "target_params": target,
                        "params": params}

    # ----------------------------------------------------------------- train / eval configs

    def section(self, cls: type, base: Any, name: str, spec: ModelSpec, point: dict,
                point_paths: dict) -> Any:
        """defaults < experiment `train:` < model `train:` < sweep point (< overrides, already
        applied to the document, which the model and the point may not undo)."""
        kwargs = _init_fields(base)
        paths = {f: (name, f) for f in kwargs}
        for key, value in getattr(spec, name).items():
            if not _overridden(self.overrides, (name, key)):
                kwargs[key] = value
                paths[key] = ("models", spec.name, name, key)
        for key, value in point.items():
            if key.startswith(name + "."):
                fld = key.split(".", 1)[1]
                kwargs[fld] = value
                paths[fld] = point_paths.get(key, ("models", spec.name, "sweep"))
        return construct(cls, kwargs, self.doc, (name,), paths)

    # ----------------------------------------------------------------- cells

    def effective_point(self, spec: ModelSpec, point: dict) -> dict:
        """The point minus keys that an override fixed (overrides win over sweep points)."""
        kept = {}
        for key, value in point.items():
            if key == "seed":
                paths = [("models", spec.name, "seed")]
            elif key.startswith(("train.", "eval.")):
                section, fld = key.split(".", 1)
                paths = [(section, fld), ("models", spec.name, section, fld)]
            else:
                paths = [("models", spec.name, "config", key)]
            if not _overridden(self.overrides, *paths):
                kept[key] = value
        return kept

    def model_cells(self, spec: ModelSpec) -> list[Cell]:
        base = self.base_fields(spec)
        raw_points = _points(spec.sweep, ("models", spec.name, "sweep"))
        widths: dict[str, int] = {}
        for point, _ in raw_points:
            for key, value in point.items():
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    minimum = 2 if key == "effective_depth" else 1
                    widths[key] = max(widths.get(key, minimum), len(str(value)))
        order = list(dict.fromkeys(k for p, _ in raw_points for k in p if k != "seed"))
        cells: list[Cell] = []
        for raw, point_paths in raw_points:
            point = self.effective_point(spec, raw)
            fields = dict(base)
            model_keys = [k for k in point if k != "seed" and "." not in k]
            fields.update({k: point[k] for k in model_keys})
            match_record = None
            if spec.match is not None:
                fields, match_record = self.solve_match(spec, fields)
            config = self.build_config(spec, fields, self.field_paths(
                spec, {k: point_paths[k] for k in model_keys}))
            seed = point.get("seed", spec.seed)
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                where = point_paths.get("seed", ("models", spec.name, "seed"))
                raise UserError(f"{self.doc.where(where)}: seed must be a non-negative "
                                f"integer, got {describe(seed)}")
            train = self.section(TrainConfig, self.experiment.train, "train", spec, point,
                                 point_paths)
            train = dataclasses.replace(train, seed=seed)
            family = registry.get(spec.family)
            if train.activation_checkpointing and not family.can(
                    registry.ACTIVATION_CHECKPOINTING):
                where = self.doc.where(("models", spec.name, "train", "activation_checkpointing"))
                raise UserError(f"{where}: 'train.activation_checkpointing' is on for model "
                                f"'{spec.name}', but family '{spec.family}' cannot recompute "
                                "its activations; turn it off for this model")
            evaluation = self.section(EvalConfig, self.experiment.eval, "eval", spec, point,
                                      point_paths)
            resolved = {}  # every swept key, with the value the cell really gets (overrides win)
            for key in (k for k in order if k in raw):
                if key.startswith(("train.", "eval.")):
                    section = train if key.startswith("train.") else evaluation
                    resolved[key] = getattr(section, key.split(".", 1)[1])
                else:
                    resolved[key] = getattr(config, key)
            if "seed" in raw:
                resolved["seed"] = seed
            parts = [spec.name]
            for key in order:
                if key in resolved:
                    short = SHORT_NAMES.get(key, key.split(".")[-1])
                    parts.append(short + _format_value(resolved[key], widths.get(key, 1)))
            if spec.kind == "train":
                parts.append(f"s{_format_value(seed, widths.get('seed', 1))}")
            name = safe_name("_".join(parts))
            params = match_record["params"] if match_record else self.params_of(
                spec.family, config, spec.name)
            cells.append(Cell(name=name, kind=spec.kind, model=spec.name, family=spec.family,
                              seed=seed, point=resolved, model_config=config, train=train,
                              eval=evaluation, params=params, match=match_record,
                              checkpoint=spec.checkpoint,
                              data=(spec.data or self.experiment.data) if spec.kind == "train"
                              else None,
                              effective_depth=registry.get(spec.family).effective_depth(config)))
        return cells


def expand(experiment: ExperimentConfig, doc: Document,
           override_keys: frozenset = frozenset()) -> tuple[Cell, ...]:
    """Every cell of the experiment, in file order: models (sweep order), then codecs.

    `doc` is the file the experiment was loaded from (for error locations); `override_keys` the
    keys that `--set` or smoke overrides fixed (a sweep point may not undo them)."""
    expander = _Expander(experiment, doc, override_keys)
    cells: list[Cell] = []
    for spec in experiment.models.values():
        cells += expander.model_cells(spec)
    for codec in experiment.codecs:
        cells.append(Cell(name=f"codec_{codec}", kind="codec", model=codec, family="codec"))
    unique: dict[str, Cell] = {}
    for cell in cells:
        if cell.name in unique:
            if unique[cell.name].record() == cell.record():
                continue  # an override made two sweep points identical: run it once
            raise UserError(f"{experiment.path}: two cells would both be named '{cell.name}' "
                            f"with different configs ({dotted(('models', cell.model))}); give "
                            "the models distinct names or sweep distinct values")
        unique[cell.name] = cell
    return tuple(unique.values())
