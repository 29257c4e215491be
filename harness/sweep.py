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
import importlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from harness.config_loader import Keys, construct, describe, dotted
from harness.errors import UserError

# family -> (name of the budget solver in models.<family>, the config field it solves)
BUDGET_SOLVERS = {"vdvae": ("width_for_param_budget", "width"),
                  "pixelcnn": ("channels_for_param_budget", "channels")}
MATCHED_FIELD = {family: solver[1] for family, solver in BUDGET_SOLVERS.items()}
SHORT_NAMES = {"effective_depth": "g", "seed": "s"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+-]+")


@dataclass(frozen=True)
class Cell:
    name: str
    kind: str                  # "train" | "speed" | "codec"
    model: str                 # the model's name in the file, or the codec ("png")
    family: str                # "vdvae" | "pixelcnn" | "codec": the rows' `model` column
    seed: int = 0
    point: dict = field(default_factory=dict)     # swept key -> value (what makes it this cell)
    model_config: Any = None   # the family's frozen config dataclass
    train: Any = None          # harness.train.TrainConfig
    eval: Any = None           # harness.evaluate.EvalConfig
    params: int | None = None
    match: dict | None = None  # {"field", "value", "target_params", "params"} when matched

    @property
    def effective_depth(self) -> int | None:
        """G for a VDVAE (its `effective_depth`, or L when that is None); None otherwise."""
        config = self.model_config
        if config is None or not hasattr(config, "effective_depth"):
            return None
        if config.effective_depth is not None:
            return int(config.effective_depth)
        return int(getattr(config, "n_top_down", 0)) or None

    def record(self) -> dict:
        """Plain-data description for plan.json and config.json."""
        from harness.config_loader import to_plain

        return {"name": self.name, "kind": self.kind, "model": self.model,
                "family": self.family, "seed": self.seed, "point": to_plain(self.point),
                "effective_depth": self.effective_depth, "params": self.params,
                "match": self.match,
                "model_config": to_plain(self.model_config), "train": to_plain(self.train),
                "eval": to_plain(self.eval)}


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


def count_params(family: str, config: Any) -> int:
    """Parameters of the model a config builds, without allocating its weights (meta device)."""
    import torch

    from models import registry

    try:
        with torch.device("meta"):
            model = registry.build_model(family, config)
    except Exception:  # a family whose constructor needs real tensors: build it for real
        model = registry.build_model(family, config)
    return registry.count_parameters(model)


class _Expander:
    def __init__(self, experiment):
        from harness.experiment import eval_config_class, train_config_class

        self.experiment = experiment
        self.doc = experiment.document
        self.overrides = experiment.override_keys
        self.train_cls = train_config_class()
        self.eval_cls = eval_config_class()
        self._params_cache: dict[tuple, int] = {}

    # ----------------------------------------------------------------- model configs

    def base_fields(self, spec) -> dict:
        from models import registry

        fields = registry.preset(spec.family, spec.preset) if spec.preset else {}
        fields.update(spec.config)
        return fields

    def field_paths(self, spec, point_paths: dict | None = None) -> dict:
        """Where each model config field was set: preset < config < match < sweep point."""
        from models import registry

        model: Keys = ("models", spec.name)
        paths: dict = {}
        if spec.preset:
            paths.update({f: model + ("preset",) for f in registry.preset(spec.family,
                                                                          spec.preset)})
        paths.update({f: model + ("config", f) for f in spec.config})
        if spec.match is not None:
            paths[MATCHED_FIELD.get(spec.family, "")] = model + ("match",)
        paths.update({k: v for k, v in (point_paths or {}).items() if "." not in k})
        return paths

    def build_config(self, spec, fields: dict, paths: dict):
        from models import registry

        config_cls, _ = registry.family(spec.family)
        return construct(config_cls, fields, self.doc, ("models", spec.name), paths)

    def params_of(self, family: str, config: Any) -> int:
        key = (family, repr(config))
        if key not in self._params_cache:
            self._params_cache[key] = count_params(family, config)
        return self._params_cache[key]

    def solve_match(self, spec, fields: dict) -> tuple[dict, dict]:
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
            target = self.params_of(other.family, other_config)
        solver_name, field_name = BUDGET_SOLVERS.get(spec.family, (None, None))
        if solver_name is None:
            raise UserError(f"{self.doc.where(keys)}: family '{spec.family}' has no parameter "
                            f"budget solver; 'match' works for {', '.join(BUDGET_SOLVERS)}")
        solver = getattr(importlib.import_module(f"models.{spec.family}"), solver_name)
        try:
            value = solver(target, **{k: v for k, v in fields.items() if k != field_name})
        except (ValueError, TypeError) as error:
            raise UserError(f"{self.doc.where(keys)}: cannot match {target:,} parameters for "
                            f"model '{spec.name}': {error}") from None
        solved = dict(fields, **{field_name: value})
        config = self.build_config(spec, solved, self.field_paths(spec))
        params = self.params_of(spec.family, config)
        if abs(params - target) > match.tolerance * target:
            raise UserError(f"{self.doc.where(keys)}: model '{spec.name}' reaches {params:,} "
                            f"parameters at {field_name}={value}, more than "
                            f"{match.tolerance:.0%} from the target {target:,}; change its "
                            "other fields or raise match.tolerance")
        return solved, {"field": field_name, "value": value, "target_params": target,
                        "params": params}

    # ----------------------------------------------------------------- train / eval configs

    def section(self, cls: type, base: Any, name: str, spec, point: dict,
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

    def effective_point(self, spec, point: dict) -> dict:
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

    def model_cells(self, spec) -> list[Cell]:
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
            train = self.section(self.train_cls, self.experiment.train, "train", spec, point,
                                 point_paths)
            if hasattr(train, "seed"):
                train = dataclasses.replace(train, seed=seed)
            evaluation = self.section(self.eval_cls, self.experiment.eval, "eval", spec, point,
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
            params = match_record["params"] if match_record else self.params_of(spec.family,
                                                                               config)
            cells.append(Cell(name=name, kind=spec.kind, model=spec.name, family=spec.family,
                              seed=seed, point=resolved, model_config=config, train=train,
                              eval=evaluation, params=params, match=match_record))
        return cells


def expand(experiment) -> tuple[Cell, ...]:
    """Every cell of the experiment, in file order: models (sweep order), then codecs."""
    expander = _Expander(experiment)
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
