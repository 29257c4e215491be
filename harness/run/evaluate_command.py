"""`harness evaluate CHECKPOINT --model PRESET_OR_YAML --dataset NAME`: a one-cell experiment
that evaluates a weights file, so nobody writes YAML to check one.

The command writes the experiment it builds (`evaluate.yaml`, with `train.max_steps: 0` and the
model entry's `checkpoint:`) into the results folder, runs it like `harness run` (rows, summary,
report), and prints test bits/dim ± 95% CI next to the figure published for that preset and
dataset (harness.published.PUBLISHED_CHECKPOINTS), saying whether that figure lies
inside our interval.

`--model` is a preset name (`cifar10`, or `vdvae:cifar10` when two families share the name) or a
YAML file holding one model entry (`family`, `preset`, `config`). `--set KEY=VALUE`: a key with a
section (`eval.iw_k=0`, `data.test_images=500`) is passed on as it is, an `EvalConfig` field
alone (`batch_size=8`) goes to `eval:`, anything else is a dataset option (`path=DIR`).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from harness import atomic
from harness.checks import field_types
from harness.contract import pick
from harness.engine import weights
from harness.engine.config import EvalConfig
from harness.errors import UserError, closest
from harness.experiment.schema import TOP_LEVEL
from harness.published import PUBLISHED_CHECKPOINTS
from harness.run.results_folder import read_rows
from harness.run.results_folder import cell_dir
from harness.run.runner import run_experiment
from models import registry

EXPERIMENT_FILE = "evaluate.yaml"


def _name(text: str, limit: int = 40) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-") or "checkpoint"
    return (name if name[0].isalpha() else "m" + name)[:limit]


def model_entry(model: str) -> tuple[str, dict]:
    """(model name, model entry) for `--model`: a preset name or a YAML file of one entry."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml"):
        try:
            entry = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise UserError(f"--model {model}: cannot read it as YAML ({error})") from None
        if isinstance(entry, dict) and isinstance(entry.get("models"), dict) \
                and len(entry["models"]) == 1:
            (name, entry), = entry["models"].items()  # an experiment file's only model
        else:
            name = path.stem
        if not isinstance(entry, dict) or "family" not in entry:
            raise UserError(f"--model {model}: expected a model entry with 'family' (and "
                            "'preset' / 'config'), or an experiment file with one model")
        entry = {k: v for k, v in entry.items() if k not in ("checkpoint", "kind", "sweep")}
        return _name(str(name)), entry
    family_name, _, preset = model.rpartition(":")
    if family_name and family_name not in registry.names():
        raise UserError(f"--model {model}: unknown model family '{family_name}'; write "
                        f"FAMILY:PRESET with one of {', '.join(registry.names())}")
    families = [family_name] if family_name else registry.names()
    found = [f for f in families if preset in registry.get(f).presets]
    if not found:
        every = sorted({p for f in families for p in registry.get(f).presets})
        hint = closest(preset, every)
        listing = "; ".join(f"{f}: {', '.join(sorted(registry.get(f).presets))}"
                            for f in families)
        raise UserError(f"--model {model}: no such preset or .yaml file"
                        + (f" — did you mean '{hint}'?" if hint else ".")
                        + f" Presets of {listing}")
    if len(found) > 1:  # the family with released checkpoints of that preset wins
        found = [f for f in found if preset in registry.get(f).reference_presets] or found
    if len(found) > 1:
        raise UserError(f"--model {model}: preset of several families ({', '.join(found)}); "
                        f"write FAMILY:{preset}")
    return _name(preset), {"family": found[0], "preset": preset}


def set_overrides(items: list[str]) -> list[str]:
    """`--set` items of the command as overrides of the experiment it builds."""
    eval_fields = set(field_types(EvalConfig))
    out = []
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE")
        if key.split(".")[0] in TOP_LEVEL:
            out.append(item)
        elif key in eval_fields:
            out.append(f"eval.{item}")
        else:
            out.append(f"data.options.{item}")
    return out


def build_experiment(checkpoint: Path, model: str, dataset: str) -> tuple[dict, str]:
    """The experiment (as a plain mapping) and its model's name."""
    name, entry = model_entry(model)
    entry = {**entry, "checkpoint": str(Path(checkpoint).resolve())}
    experiment = {"name": _name("evaluate_" + Path(checkpoint).stem, 47),
                  "description": f"evaluation of {Path(checkpoint).name} ({model}) on {dataset}",
                  "data": {"dataset": dataset}, "models": {name: entry},
                  "train": {"max_steps": 0}, "runner": {"probe_steps": 0}}
    return experiment, name


def published_line(preset: str | None, dataset: str, bits: float, ci: float) -> str:
    figure = PUBLISHED_CHECKPOINTS.get(preset or "")
    if figure is None or figure[0] != dataset:
        return (f"no published figure for preset {preset or '(none)'} on {dataset} (published: "
                + ", ".join(f"{p} on {v[0]} {v[2]:.2f}" for p, v in PUBLISHED_CHECKPOINTS.items())
                + ")")
    inside = abs(bits - figure[2]) <= ci
    return (f"published (Child 2021, {figure[1]}): {figure[2]:.2f} bits/dim; it lies "
            + ("inside" if inside else "outside") + f" our 95% CI "
            f"[{bits - ci:.3f}, {bits + ci:.3f}]")


def as_command_error(error: UserError, path: Path, model_name: str) -> UserError:
    """The error of the generated experiment file in the command's own terms: no file and
    line the user never wrote, its keys named as the flags that set them."""
    text = str(error)
    text = re.sub(re.escape(str(path)) + r"(:\d+)?: ", "", text)
    text = text.replace(str(path), "the evaluation")
    replacements = [(rf"\bmodels\.{re.escape(model_name)}\.(preset|family)\b", "--model"),
                    (rf"\bmodels\.{re.escape(model_name)}\.checkpoint\b", "CHECKPOINT"),
                    (r"\bdata\.options\.([A-Za-z_]+)", r"--set \1"),
                    (r"\bdata\.dataset\b", "--dataset"), (r"^data: dataset ", "--dataset "),
                    (r"\beval\.([A-Za-z_]+)", r"--set \1"),
                    (r"pass the ([A-Za-z_]+) option", r"pass --set \1=..."),
                    (r"the ([A-Za-z_]+) option", r"--set \1")]
    for pattern, replacement in replacements:
        text = re.sub(pattern, replacement, text)
    return UserError(text)


def evaluate_checkpoint(checkpoint: Path, model: str, dataset: str, overrides: list[str] = (),
                        results_dir: Path | None = None) -> int:
    """Build, write and run the one-cell experiment; print the figures. Returns the exit
    status of the run. A refused evaluation leaves nothing behind: the generated experiment
    file is removed again when no cell ran."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint}: no such file")
    weights_file = weights.read_weights_file(checkpoint)  # unreadable or unsafe: one line
    experiment, name = build_experiment(checkpoint, model, dataset)
    if weights_file.layout != "harness":
        # A released file holds one set of weights: report it once, not as "raw = ema".
        experiment["eval"] = {"weights": ["raw"]}
    root = Path(results_dir) if results_dir else Path("results") / experiment["name"]
    existed = root.exists()
    if results_dir:
        atomic.check_output_folder(root, "--results")
    else:
        atomic.check_output_folder(root, "results folder", "move that file or pass --results DIR")
    root.mkdir(parents=True, exist_ok=True)
    path = root / EXPERIMENT_FILE
    had_cells = (root / "cells").is_dir()
    atomic.write_text(path, "# written by harness evaluate\n"
                      + yaml.safe_dump(experiment, sort_keys=False))
    try:
        status = run_experiment(path, results_dir=root,
                                overrides=set_overrides(list(overrides)))
    except UserError as error:
        if not had_cells and not (root / "cells").is_dir():
            path.unlink(missing_ok=True)
            if not existed:
                try:
                    root.rmdir()
                except OSError:
                    pass
        raise as_command_error(error, path, name) from None
    cell_rows = []
    cells = sorted((root / "cells").iterdir()) if (root / "cells").is_dir() else []
    for folder in cells:
        if folder.name.startswith(name):
            cell_rows = read_rows(cell_dir(root, folder.name))
    preset = experiment["models"][name].get("preset")
    shown: dict[tuple, list[str]] = {}  # (bits, ci) -> weights names (one file: raw = ema)
    for which in ("raw", "ema"):
        bits = pick(cell_rows, "test_bits_per_dim", weights=which)
        ci = pick(cell_rows, "test_bits_per_dim_ci95", weights=which)
        if bits is not None and ci is not None:
            shown.setdefault((bits["value"], ci["value"], bits.get("n_images")), []).append(which)
    for (bits, ci, n_images), names in shown.items():
        which = "" if names == ["raw"] and weights_file.layout != "harness" else \
            f" ({' = '.join(names)} weights)"
        print(f"{checkpoint.name}{which}: {bits:.4f} ± {ci:.4f} "
              f"bits/dim over {n_images} {dataset} test images; "
              + published_line(preset, dataset, bits, ci), flush=True)
    return status
