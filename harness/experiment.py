"""Experiment files (`experiments/*.yaml`) → a frozen `ExperimentConfig`, strictly.

Schema (every section optional except `models`; see experiments/smoke.yaml for a full example):

    name: depth_sweep                 # default: the file's stem
    description: one line for the report
    data: {dataset: fashion_mnist, options: {...}, data_dir: null,
           train_images: null, validation_images: null, test_images: null}   # null = all
    models:                           # one entry per model; the key names its cells
      vdvae:
        family: vdvae                 # a models.registry family
        preset: fmnist_400k           # optional; `config:` fields override it
        config: {zdim: 16}
        match: {params: 400000}       # or {params_of: other_model}: solve width/channels
        seed: 0
        kind: train                   # train | speed (sampling speed of untrained weights)
        train: {lr: 3e-4}             # per-model training overrides (TrainConfig fields)
        eval: {}                      # per-model evaluation overrides (EvalConfig fields)
        sweep:                        # cells = grid product, then the listed points
          grid: {effective_depth: [1, 2, 4], seed: [0]}
          points: [{effective_depth: 1, seed: 1}]
    train: {...}                      # harness.train.TrainConfig fields
    eval: {...}                       # harness.evaluate.EvalConfig fields
    codecs: [png, webp]               # reference rows on the same test images
    sampling_speed: {batch_sizes: [1, 16], repeats: 3, warmup: 1}
    runner: {jobs: 2, threads_per_job: null, summary_weights: raw, report: true}
    smoke: false                      # `--set smoke=true` shrinks the run to seconds
    smoke_overrides: {train.steps: 4} # dotted keys applied when smoke is on

Sweep keys name a model config field, `seed`, or `train.<field>` / `eval.<field>`.
Precedence, lowest first: dataclass defaults < the file (experiment-wide `train:`/`eval:`, then the
model's own `train:`/`eval:`) < the sweep point < smoke overrides < `--set KEY=VALUE`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.config_loader import (
    Document, Keys, build_dataclass, check_keys, coerce, describe, dotted,
    field_types, load_document, parse_override, split_dotted, to_plain,
)
from harness.errors import UserError, closest

CODECS = ("png", "webp")
_MODEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,47}$")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataSpec:
    """Which dataset and how much of each split (None: the whole split)."""

    dataset: str
    options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    train_images: int | None = None
    validation_images: int | None = None
    test_images: int | None = None

    def __post_init__(self):
        for name in ("train_images", "validation_images", "test_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be a positive number of images or null (all), "
                                 f"got {value}")


@dataclass(frozen=True)
class MatchSpec:
    """Parameter matching: solve the family's size field (VDVAE `width`, PixelCNN `channels`)
    for a budget given directly (`params`) or as another model's count (`params_of`)."""

    params: int | None = None
    params_of: str | None = None
    tolerance: float = 0.05  # relative; the plan fails when the solved count is further off

    def __post_init__(self):
        if (self.params is None) == (self.params_of is None):
            raise ValueError("give exactly one of 'params' (a number) or 'params_of' (another "
                             "model's name)")
        if self.params is not None and self.params < 1:
            raise ValueError(f"params: must be positive, got {self.params}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance: must be in (0, 1), got {self.tolerance}")


@dataclass(frozen=True)
class SweepSpec:
    """Cells of one model: the product of `grid` (first key varies slowest), then `points`."""

    grid: dict[str, list] = field(default_factory=dict)
    points: tuple[dict, ...] = ()

    def __post_init__(self):
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"{key}: a grid axis needs at least one value")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    match: MatchSpec | None = None
    seed: int = 0
    kind: Literal["train", "speed"] = "train"
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    sweep: SweepSpec = field(default_factory=SweepSpec)


@dataclass(frozen=True)
class SpeedSpec:
    """Sampling throughput: median images/s over `repeats` timed calls after `warmup`."""

    batch_sizes: tuple[int, ...] = (1, 16)       # VAE ancestral and PixelCNN cached sampling
    repeats: int = 3
    warmup: int = 1
    methods: tuple[Literal["naive", "cached"], ...] = ("naive", "cached")  # autoregressive
    # The naive sampler runs the network H·W·C times per call: one call is already a long,
    # stable timing, and big batches of it take hours on a CPU.
    naive_batch_sizes: tuple[int, ...] = (1,)
    naive_repeats: int = 1
    naive_warmup: int = 0
    temperature: float = 1.0

    def __post_init__(self):
        for name in ("batch_sizes", "naive_batch_sizes"):
            sizes = getattr(self, name)
            if not sizes or any(b < 1 for b in sizes):
                raise ValueError(f"{name}: need positive sizes, got {list(sizes)}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats: must be >= 1 (and warmup >= 0), got {self.repeats}")
        if self.naive_repeats < 1 or self.naive_warmup < 0:
            raise ValueError(f"naive_repeats: must be >= 1 (and naive_warmup >= 0), got "
                             f"{self.naive_repeats}")

    def timing(self, method: str) -> tuple[tuple[int, ...], int, int]:
        """(batch sizes, repeats, warm-up calls) for a sampler."""
        if method == "naive":
            return self.naive_batch_sizes, self.naive_repeats, self.naive_warmup
        return self.batch_sizes, self.repeats, self.warmup


@dataclass(frozen=True)
class RunnerSpec:
    jobs: int = 1                          # cells in parallel processes
    threads_per_job: int | None = None     # torch threads per process; None: cores // jobs
    summary_weights: Literal["raw", "ema"] = "ema"  # which weights summary.csv headlines
    report: bool = True                    # build the report at the end
    probe_steps: int = 2                   # timed training steps per model for the plan's ETA
    time_budget_min: float | None = None   # the plan warns when its estimate is over this
    estimate: Literal["probe", "flops"] = "probe"  # how the plan estimates time
    flops_per_s: float | None = None       # sustained rate assumed by estimate: flops

    def __post_init__(self):
        if self.jobs < 1:
            raise ValueError(f"jobs: must be >= 1, got {self.jobs}")
        if self.threads_per_job is not None and self.threads_per_job < 1:
            raise ValueError(f"threads_per_job: must be >= 1 or null, got {self.threads_per_job}")
        if self.probe_steps < 0:
            raise ValueError(f"probe_steps: must be >= 0, got {self.probe_steps}")
        if self.estimate == "flops" and not (self.flops_per_s and self.flops_per_s > 0):
            raise ValueError("flops_per_s: estimate 'flops' needs a positive flops_per_s "
                             "(the sustained FLOP/s of the machine you will run on)")


TOP_LEVEL = ("name", "description", "data", "models", "train", "eval", "codecs",
             "sampling_speed", "runner", "smoke", "smoke_overrides")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    path: Path
    description: str
    data: DataSpec | None
    models: dict[str, ModelSpec]
    train: Any                      # harness.train.TrainConfig (experiment-wide)
    eval: Any                       # harness.evaluate.EvalConfig (experiment-wide)
    codecs: tuple[str, ...]
    sampling_speed: SpeedSpec | None
    runner: RunnerSpec
    smoke: bool
    overrides: tuple[str, ...]      # the --set arguments, as given
    document: Document = field(repr=False, compare=False)
    override_keys: frozenset = field(repr=False, default=frozenset())  # keys set by overrides
    cells: tuple = ()               # harness.sweep.Cell, expanded and validated

    def record(self) -> dict:
        """The experiment as loaded (after overrides), for results/<name>/experiment.yaml."""
        data = to_plain(self.document.data)
        data["name"] = self.name
        return data


# --------------------------------------------------------------------------- section classes


def train_config_class() -> type:
    from harness.train import TrainConfig

    return TrainConfig


def eval_config_class() -> type:
    from harness.evaluate import EvalConfig

    return EvalConfig


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
    smoke = doc.get(("smoke",), False)
    for (keys, value), _origin in parsed:
        if keys == ("smoke",):
            smoke = value
    if not isinstance(smoke, bool):
        raise UserError(f"{doc.where(('smoke',))}: 'smoke' must be true or false, "
                        f"got {describe(smoke)}")
    closed = {("models",): list((doc.get(("models",)) or {}).keys())}
    overridden: set = set()
    if smoke:
        smoke_overrides = doc.get(("smoke_overrides",), {}) or {}
        if not isinstance(smoke_overrides, dict):
            raise UserError(f"{doc.where(('smoke_overrides',))}: 'smoke_overrides' must be a "
                            f"mapping of dotted keys to values")
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


def _split_key(key: str, doc: Document, keys: Keys) -> Keys:
    try:
        return split_dotted(key)
    except UserError as error:
        raise UserError(f"{doc.where(keys)}: {error}") from None


def _load_models(doc: Document, data: DataSpec | None) -> dict[str, ModelSpec]:
    from models import registry

    raw = doc.get(("models",))
    if raw is None:
        raise UserError(f"{doc.source}: no 'models' section: an experiment needs at least one "
                        "model (see experiments/smoke.yaml)")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{doc.where(('models',))}: 'models' must be a mapping of model names to "
                        f"model sections, got {describe(raw)}")
    train_cls, eval_cls = train_config_class(), eval_config_class()
    models: dict[str, ModelSpec] = {}
    for name, section in raw.items():
        keys = ("models", name)
        if not isinstance(name, str) or not _MODEL_NAME.match(name) or name.startswith("codec"):
            raise UserError(f"{doc.where(keys)}: model name {name!r} must start with a letter "
                            "and use only letters, digits, '_' and '-' (at most 48; not "
                            "'codec...', which names codec rows); it names result folders")
        if isinstance(section, dict) and "family" in section and isinstance(section["family"], str):
            try:
                registry.family(section["family"])
            except ValueError as error:
                raise UserError(f"{doc.where(keys + ('family',))}: {error}") from None
        spec = build_dataclass(ModelSpec, section, doc, keys, name=name)
        if spec.preset is not None:
            try:
                registry.preset(spec.family, spec.preset)
            except ValueError as error:
                raise UserError(f"{doc.where(keys + ('preset',))}: {error}") from None
        fields = registry.config_fields(spec.family)
        check_keys(spec.config, fields, doc, keys + ("config",))
        check_section_overrides(train_cls, spec.train, doc, keys + ("train",))
        check_section_overrides(eval_cls, spec.eval, doc, keys + ("eval",))
        _check_sweep_keys(spec, fields, doc, keys + ("sweep",), train_cls, eval_cls)
        if spec.kind == "train" and data is None:
            raise UserError(f"{doc.where(keys)}: model '{name}' is trained (kind: train) but the "
                            "file has no 'data' section naming a dataset")
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


def sweep_key_choices(fields: list[str], train_cls: type, eval_cls: type) -> list[str]:
    return (list(fields) + ["seed"] + [f"train.{f}" for f in field_types(train_cls)]
            + [f"eval.{f}" for f in field_types(eval_cls)])


def _check_sweep_keys(spec: ModelSpec, fields: list[str], doc: Document, keys: Keys,
                      train_cls: type, eval_cls: type) -> None:
    choices = sweep_key_choices(fields, train_cls, eval_cls)
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
        from harness.sweep import MATCHED_FIELD

        matched = MATCHED_FIELD.get(spec.family)
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
    try:
        from harness.data import dataset_names
    except ImportError:  # the data registry is not installed: names are checked when loading
        return spec
    names = list(dataset_names())
    if spec.dataset not in names:
        hint = closest(spec.dataset, names)
        raise UserError(f"{doc.where(('data', 'dataset'))}: unknown dataset '{spec.dataset}'."
                        + (f" Did you mean '{hint}'?" if hint else "")
                        + f" Valid: {', '.join(sorted(names))}")
    return spec


def load_experiment(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment file; every problem is a one-line `UserError`.

    The returned config already holds its expanded, validated cells (`harness.sweep.expand`).
    """
    path = Path(path)
    doc = load_document(path)
    overrides = tuple(overrides or ())
    smoke, override_keys = _apply_overrides(doc, list(overrides))
    check_keys(doc.data, TOP_LEVEL, doc, ())

    name = doc.get(("name",), path.stem)
    name = coerce(name, str, doc, ("name",))
    if not _MODEL_NAME.match(name):
        raise UserError(f"{doc.where(('name',))}: experiment name {name!r} must start with a "
                        "letter and use only letters, digits, '_' and '-' (it names folders)")
    if smoke:
        name = f"{name}_smoke"  # never mixes with (or overwrites) the full run's results
    description = coerce(doc.get(("description",), ""), str, doc, ("description",))
    data = _load_data(doc)
    train = build_dataclass(train_config_class(), doc.get(("train",)), doc, ("train",))
    evaluation = build_dataclass(eval_config_class(), doc.get(("eval",)), doc, ("eval",))
    models = _load_models(doc, data)
    codecs = coerce(doc.get(("codecs",), []) or [], tuple[Literal[CODECS], ...], doc, ("codecs",))
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
    smoke_raw = doc.get(("smoke_overrides",))
    if smoke_raw is not None and not isinstance(smoke_raw, dict):
        raise UserError(f"{doc.where(('smoke_overrides',))}: 'smoke_overrides' must be a mapping "
                        "of dotted keys to values")
    experiment = ExperimentConfig(
        name=name, path=path, description=description, data=data, models=models, train=train,
        eval=evaluation, codecs=tuple(codecs), sampling_speed=speed, runner=runner, smoke=smoke,
        overrides=overrides, document=doc, override_keys=frozenset(override_keys))
    from harness.sweep import expand

    return dataclasses.replace(experiment, cells=expand(experiment))


__all__ = ["ExperimentConfig", "DataSpec", "ModelSpec", "MatchSpec", "SweepSpec", "SpeedSpec",
           "RunnerSpec", "load_experiment", "CODECS"]
