"""Run one cell of an experiment and leave its results in `cells/<cell>/` (docs/results.md).

Three kinds of cell:

* `train`: build the model (with the weights of the model entry's `checkpoint` when it names
  one), train it (resuming from `checkpoints/` when a previous attempt was interrupted; nothing
  when `train.max_steps` is 0), evaluate raw and EMA weights on the test images, record the
  training figures;
* `speed`: parameters and FLOPs of an untrained model whose sampling throughput the run's speed
  phase times (sampling speed does not depend on the weights' values: the same operations run
  whatever they are);
* `codec`: per-image PNG / WebP-lossless bits/dim of the same test images (`harness.engine.codecs`).

Every cell writes (through harness.run.results_folder) `config.json`, `provenance.json`, `status.json` ("running", then "done" or
"failed" with a one-line error; the traceback goes to `error.log`) and its tidy rows to
`metrics.jsonl`, written whole and atomically when the cell ends. Sampling speed is not timed
here: harness.run.speed_phase measures it after every cell of the run has ended, into
`sampling_speed.json`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from harness import atomic
from harness.contract import CONFIG_FILE, ROWS_FILE, SPEED_FILE, ci95
from harness.data import load_dataset
from harness.engine import allocator, codecs, throughput, weights
from harness.engine.artifacts import save_npy
from harness.engine.evaluate import evaluate
from harness.engine.train import train
from harness.errors import UserError
from harness.experiment.schema import Cell, DataSpec
from harness.plain import to_plain
from harness.published import PUBLISHED_CHECKPOINTS, checkpoint_url
from harness.run.provenance import cell_provenance
from harness.run.results_folder import (CACHE_DIR, CellContext, cell_config_record, read_status,
                                        write_status)
from models import registry


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if not isinstance(error, UserError) else text


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def _load_splits(name: str, data_dir: str | None, options: str):
    return load_dataset(name, Path(data_dir) if data_dir else None, **json.loads(options))


def load_splits(data: DataSpec):
    """The dataset's splits (cached per process: cells of one experiment share them)."""
    return _load_splits(data.dataset, data.data_dir, json.dumps(data.options, sort_keys=True))


def _first(images, limit: int | None):
    """The first `limit` images (all when None) as a uint8 tensor (N, C, H, W)."""
    n = len(images) if limit is None else min(limit, len(images))
    if isinstance(images, torch.Tensor):
        return images[:n]
    if n == len(images):
        return images  # a lazy (memory-mapped) set stays lazy: consumers index batches
    return images[np.arange(n)]


def test_images(data: DataSpec):
    splits = load_splits(data)
    return _first(splits.test, data.test_images)


# --------------------------------------------------------------------------- the three kinds


def _check_shape(splits, cell: Cell) -> None:
    model_shape = tuple(registry.get(cell.family).image_shape(cell.model_config))
    if model_shape != tuple(splits.image_shape):
        raise UserError(f"cell {cell.name}: model '{cell.model}' is built for images "
                        f"{model_shape} (C, H, W) but dataset '{splits.name}' has "
                        f"{tuple(splits.image_shape)}; set the model's image_size / "
                        "image_channels to match")


def starting_models(cell: Cell) -> tuple[dict[str, torch.nn.Module], dict | None]:
    """The cell's model, seeded, with the weights of its `checkpoint` when it names one, as
    {"raw": model} (plus "ema" when a zero-step cell evaluates a harness checkpoint's EMA), and
    the checkpoint's provenance (file name, sha256, layout) or None."""
    family = registry.get(cell.family)
    torch.manual_seed(cell.seed)
    model = family.build_model(cell.model_config)
    if cell.train.activation_checkpointing:  # the sweep checked that the family can
        model.use_activation_checkpointing(True)
    if cell.checkpoint is None:
        return {"raw": model}, None
    weights_file = weights.read_weights_file(cell.checkpoint)
    models = {"raw": weights.load_weights(model, family, weights_file, "raw", cell.model)}
    if cell.train.max_steps == 0 and weights_file.layout == "harness" \
            and "ema" in cell.eval.weights:
        ema = family.build_model(cell.model_config)
        models["ema"] = weights.load_weights(ema, family, weights_file, "ema", cell.model)
    return models, weights_file.provenance()


def _missing_checkpoint(cell: Cell) -> str | None:
    """'cell x: checkpoint P not found; <where to get it>', or None when the file is there."""
    path = Path(cell.checkpoint)
    if path.is_file():
        return None
    released = {name: preset for preset, entry in PUBLISHED_CHECKPOINTS.items()
                for name in entry[3:] if name}
    preset = released.get(path.name)
    where = (f"it is the reference's released {preset} checkpoint: download it from "
             f"{checkpoint_url(preset, path.name)}" if preset
             else "check the model entry's checkpoint: path")
    return f"cell {cell.name}: checkpoint {path} not found; {where}"


def check_checkpoints(cells) -> None:
    """Refuse (UserError) a cell's checkpoint that is missing, cannot be read or does not fit
    its model."""
    for cell in cells:
        if cell.checkpoint is None or cell.kind != "train":
            continue
        missing = _missing_checkpoint(cell)
        if missing:
            raise UserError(missing)
        weights.check_fits(Path(cell.checkpoint), registry.get(cell.family), cell.model_config,
                           cell.model)


def missing_inputs(cells, file_data: DataSpec | None) -> dict[str, str]:
    """Cells that cannot run because an input they name is not there: a checkpoint file that
    does not exist, or a model's own dataset (`models.<name>.data`) that does not load. Each gets
    one line saying what is missing and where to get it; the runner skips those cells and runs
    the others (experiments/published_checkpoints.yaml: evaluate the releases you have). The
    file's own `data:` is not optional: it fails the run as before."""
    reasons: dict[str, str] = {}
    data_errors: dict[str, str | None] = {}
    for cell in cells:
        if cell.kind != "train":
            continue
        missing = _missing_checkpoint(cell) if cell.checkpoint is not None else None
        if missing is None and cell.data is not None and cell.data != file_data:
            key = json.dumps(to_plain(cell.data), sort_keys=True)
            if key not in data_errors:
                try:
                    load_splits(cell.data)
                    data_errors[key] = None
                except UserError as error:
                    data_errors[key] = f"cell {cell.name}: {error}"
            missing = data_errors[key]
        if missing is not None:
            reasons[cell.name] = missing
    return reasons


def _train_and_evaluate(cell: Cell, context: CellContext, cell_dir: Path):
    """Train (from the cell's starting weights) and evaluate; every torchrun rank runs it (rank
    0 gets the rows). Returns (rows, TrainResult, checkpoint provenance or None)."""
    family = registry.get(cell.family)
    splits = load_splits(cell.data)
    _check_shape(splits, cell)
    models, checkpoint = starting_models(cell)
    val_images = None
    if cell.train.val_every_steps:
        val_images = _first(splits.validation, cell.data.validation_images)
    result = train(models["raw"], _first(splits.train, cell.data.train_images), cell.train,
                   cell_dir, val_images=val_images)
    evaluated = {"raw": result.model, "ema": result.ema_model}
    if "ema" in models:  # a zero-step cell on a harness checkpoint: its own EMA weights
        evaluated["ema"] = models["ema"].to(throughput.model_device(result.model))
    rows = evaluate(evaluated, family, _first(splits.test, cell.data.test_images),
                    cell.eval, cell_dir,
                    train_images=_first(splits.train, cell.data.train_images), label=cell.name,
                    cache_dir=cell_dir.parent.parent / CACHE_DIR,
                    show_progress=cell.train.progress != "off")
    return rows, result, checkpoint


def train_follower(cell: Cell, context: CellContext, cell_dir: Path) -> None:
    """A non-zero torchrun rank's share of a train cell: the data-parallel training and its
    shard of the evaluation's likelihood passes (rank 0 writes every file)."""
    _train_and_evaluate(cell, context, cell_dir)


def _record_checkpoint(cell_dir: Path, checkpoint: dict | None, splits) -> None:
    """Add the starting checkpoint and the evaluation conventions to provenance.json."""
    path = Path(cell_dir) / "provenance.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    record["checkpoint"] = checkpoint
    record["evaluation"] = evaluation_conventions(splits)
    atomic.write_json(path, record)


def evaluation_conventions(splits) -> dict:
    """How the test figures were taken, and where the reference implementation differs."""
    provenance = splits.provenance
    return {"images": "every test image, the last partial batch included (the reference's "
                      "evaluation drops it: drop_last=True)",
            "n_bits": splits.n_bits,
            "quantisation": "8-bit levels x/127.5 - 1" if splits.n_bits == 8 else
            f"{splits.n_bits}-bit levels 2k/(2^{splits.n_bits} - 1) - 1 with k = x >> "
            f"{8 - splits.n_bits} (the reference maps floor(x/8)*8 to [-1, 1] with a bin "
            "half-width of 1/31; its figures are not exactly comparable)",
            "dataset_version": provenance.get("version"),
            "objective": "one posterior sample, analytic KL (VAE); exact NLL (autoregressive)"}


def _train_cell(cell: Cell, context: CellContext, cell_dir: Path) -> tuple[list[dict], dict]:
    rows, result, checkpoint = _train_and_evaluate(cell, context, cell_dir)
    _record_checkpoint(cell_dir, checkpoint, load_splits(cell.data))
    rows += result.metric_rows()
    return rows, {"steps": result.steps, "stopped_because": result.stopped_because,
                  "resumed_from_step": result.resumed_from_step}


def _speed_cell(cell: Cell, context: CellContext, cell_dir: Path) -> tuple[list[dict], dict]:
    """Parameters and FLOPs; the sampling throughput is timed in the run's speed phase
    (harness.run.speed_phase), after every cell, with nothing else running."""
    family = registry.get(cell.family)
    torch.manual_seed(cell.seed)
    model = family.build_model(cell.model_config).eval()
    channels, height, width = family.image_shape(cell.model_config)
    rows: list[dict] = [{"metric": "params", "value": registry.count_parameters(model)}]
    probe = torch.randint(0, 256, (1, channels, height, width), dtype=torch.uint8)
    rows.append({"metric": "flops_per_image", "value": throughput.flops_per_image(model, probe)})
    return rows, {}


def _codec_cell(cell: Cell, context: CellContext, cell_dir: Path) -> tuple[list[dict], dict]:
    if not codecs.codec_available(cell.model):
        raise UserError(f"this Pillow build cannot write {cell.model.upper()}; install a Pillow "
                        "with WebP support or drop it from 'codecs'")
    images = test_images(context.data)  # (N, C, H, W) uint8, possibly lazy
    chunks = []
    for first in range(0, len(images), 1000):  # one batch in memory at a time
        batch = images[np.arange(first, min(first + 1000, len(images)))]
        chunks.append(codecs.per_image_bits_per_dim(np.asarray(batch), cell.model))
    bits = np.concatenate(chunks) if chunks else np.zeros(0)
    save_npy(bits, cell_dir / "per_image_test_bits_per_dim_codec.npy")
    base = {"split": "test", "codec": cell.model, "n_images": int(bits.size)}
    return [{"metric": "test_bits_per_dim", "value": float(bits.mean()), **base},
            {"metric": "test_bits_per_dim_ci95", "value": ci95(bits), **base}], {}


KINDS = {"train": _train_cell, "speed": _speed_cell, "codec": _codec_cell}


# --------------------------------------------------------------------------- one cell


def cell_data(cell: Cell, context: CellContext) -> DataSpec | None:
    """The dataset a cell reads: its model's own (train cells), the file's (codec cells)."""
    return cell.data if cell.kind == "train" else context.data if cell.kind == "codec" else None


def _dataset_provenance(context: CellContext, cell: Cell) -> dict:
    data = cell_data(cell, context)
    if data is None:
        return {}
    provenance = dict(load_splits(data).provenance)
    provenance["used_images"] = {"train": data.train_images,
                                 "validation": data.validation_images,
                                 "test": data.test_images}
    return provenance


def run_cell(cell: Cell, context: CellContext, cell_dir: Path) -> dict:
    """Run `cell` into `cell_dir` (the caller holds its lock); returns the final status dict.

    Never raises for a failure of the cell itself: the error is recorded and returned so that
    the other cells go on. KeyboardInterrupt leaves the cell "running" (a re-run resumes it).
    """
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    allocator.keep_freed_memory()  # every launcher's cells pass here, in their own process
    start = time.perf_counter()
    previous = read_status(cell_dir)
    wall_before = float(previous.get("wall_s") or 0.0) if previous.get("status") != "done" else 0.0
    atomic.write_json(cell_dir / CONFIG_FILE, cell_config_record(cell, context))
    write_status(cell_dir, "running", wall_s=wall_before)
    (cell_dir / SPEED_FILE).unlink(missing_ok=True)  # measured on the weights of a past run
    try:
        seeds = {"cell": cell.seed,
                 "train": cell.train.seed if cell.train is not None else None,
                 "eval_noise": cell.eval.noise_seed if cell.eval is not None else None}
        atomic.write_json(cell_dir / "provenance.json",
                          cell_provenance(seeds, _dataset_provenance(context, cell)))
        rows, extra = KINDS[cell.kind](cell, context, cell_dir)
    except Exception as error:  # noqa: BLE001 - any failure of one cell is recorded, not fatal
        atomic.write_text(cell_dir / "error.log", traceback.format_exc())
        wall_s = wall_before + time.perf_counter() - start
        status = {"status": "failed", "error": one_line(error), "wall_s": wall_s}
        write_status(cell_dir, **status)
        return status
    except KeyboardInterrupt:
        write_status(cell_dir, "running", error="interrupted",
                     wall_s=wall_before + time.perf_counter() - start)
        raise
    wall_s = wall_before + time.perf_counter() - start
    rows = [decorate(row, cell, context) for row in rows]
    text = "".join(json.dumps(row, sort_keys=True, default=str) + "\n" for row in rows)
    atomic.write_text(cell_dir / ROWS_FILE, text)
    status = {"status": "done", "error": None, "wall_s": wall_s, **extra,
              "rows_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    write_status(cell_dir, **status)
    return status


def decorate(row: dict, cell: Cell, context: CellContext) -> dict:
    """Add the keys every metrics row carries (docs/results.md), keeping the row's own."""
    base = {"experiment": context.experiment, "cell": cell.name, "model": cell.family,
            "dataset": cell_data(cell, context).dataset if cell.kind != "speed" else "none"}
    if cell.kind != "codec":
        base.update({"seed": cell.seed, "params": cell.params})
        if cell.effective_depth is not None:
            base["effective_depth"] = cell.effective_depth
    return {**base, **row}
