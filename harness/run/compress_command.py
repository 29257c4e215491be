"""`harness compress MODEL IMAGES OUT` and `harness decompress MODEL IN OUTDIR`: a model's
lossless codec on files (harness.engine.lossless: range coding for an autoregressive model,
bits-back ANS for a hierarchical VAE).

MODEL is a results cell folder (`results/<experiment>/cells/<cell>/`: the weights its summary
row uses, raw or EMA, from its final training checkpoint, or for an evaluate-only cell the
weights file its provenance names) or a weights file with `--model PRESET_OR_YAML` (as in
`harness evaluate`; a harness checkpoint gives its raw weights). `decompress` of a weights file
may leave out `--model`: the file's header records the family and config it was made with (the
model's hash still decides whether it decodes).

IMAGES is a folder of PNGs, a uint8 `.npy` or `DATASET:SPLIT[:N]` (harness.data.sources).
`decompress` writes one PNG per image into OUTDIR: a folder's files keep their relative names
(with the suffix .png), a split's or an array's images are named by zero-padded index. Both
print the real bits/dim, the model's bits/dim on the same images and the seconds taken.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from harness import atomic
from harness.contract import DEFAULT_SUMMARY_WEIGHTS
from harness.data.sources import load_images
from harness.engine import checkpoint, lossless, weights
from harness.engine.lossless.rows import model_bits_per_dim
from harness.errors import UserError
from harness.plain import to_plain
from harness.run.evaluate_command import model_entry
from models import registry


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    family: registry.Family
    description: str  # "cell vdvae_s0 (raw weights, step 400)", for messages


def _config_from(family: registry.Family, preset: str | None, fields: dict, where: str):
    try:
        return family.build_config(preset, **(fields or {}))
    except (TypeError, ValueError) as error:
        raise UserError(f"{where}: {' '.join(str(error).split())}") from None


def _summary_weights(cell_dir: Path, name: str) -> str:
    """The weights the results' summary.csv shows for the cell (its `weights` column); the
    contract's default when the cell is in no summary."""
    summary = cell_dir.parent.parent / "summary.csv"
    if summary.is_file():
        with summary.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("cell") == name and row.get("weights"):
                    return row["weights"]
    return DEFAULT_SUMMARY_WEIGHTS


def load_cell_model(cell_dir: Path) -> LoadedModel:
    """The model of a results cell folder with the weights its summary uses."""
    record = atomic.read_json_object(cell_dir / "config.json")
    if not record.get("family") or not isinstance(record.get("model_config"), dict):
        raise UserError(f"{cell_dir}: not a results cell folder (no config.json with a model); "
                        "give cells/<cell>/ of a results folder, or a weights file with --model")
    name = str(record.get("name", cell_dir.name))
    if record.get("kind") != "train":
        raise UserError(f"{cell_dir}: cell {name} is a {record.get('kind')} cell and has no "
                        "trained weights; give a train cell")
    family = _family(record["family"], str(cell_dir))
    config = _config_from(family, None, record["model_config"], f"{cell_dir}/config.json")
    which = _summary_weights(cell_dir, name)
    steps = int((record.get("train") or {}).get("max_steps") or 0)
    if steps > 0:
        found = checkpoint.list_checkpoints(cell_dir / "checkpoints")
        if not found:
            raise UserError(f"{cell_dir}: has no checkpoints/step-<N>.pt; the cell has not "
                            "finished training (harness run resumes it)")
        path = found[-1][1]
    else:
        source = (atomic.read_json_object(cell_dir / "provenance.json").get("checkpoint")
                  or {}).get("path") or record.get("checkpoint")
        if not source:
            raise UserError(f"{cell_dir}: an evaluate-only cell whose provenance names no "
                            "weights file")
        path = Path(source)
    weights_file = weights.read_weights_file(path)
    if weights_file.layout != "harness":
        which = "raw"  # a reference file holds one set of weights, used for both
    model = family.build_model(config)
    weights.load_weights(model, family, weights_file, which, name)
    step = f", step {weights_file.step}" if weights_file.step is not None else ""
    return LoadedModel(model.eval(), family, f"cell {name} ({which} weights{step})")


def _family(name: str, where: str) -> registry.Family:
    try:
        return registry.get(name)
    except ValueError as error:
        raise UserError(f"{where}: {error}") from None


def load_model(model_path: str, preset_or_yaml: str | None,
               header: dict | None = None) -> LoadedModel:
    """MODEL as the commands take it (see the module docstring)."""
    path = Path(model_path)
    if path.is_dir():
        if preset_or_yaml:
            raise UserError(f"--model {preset_or_yaml}: MODEL {path} is a results cell folder, "
                            "whose config.json names its model; --model is for a weights file")
        return load_cell_model(path)
    if not path.is_file():
        raise UserError(f"{path}: no such results cell folder or weights file")
    if preset_or_yaml:
        _, entry = model_entry(preset_or_yaml)
        if entry.get("match"):
            raise UserError(f"--model {preset_or_yaml}: a 'match:' entry has no fixed size; "
                            "give the solved config (a cell's config.json has it)")
        family = _family(entry["family"], f"--model {preset_or_yaml}")
        config = _config_from(family, entry.get("preset"), entry.get("config") or {},
                              f"--model {preset_or_yaml}")
    elif header is not None and header.get("model", {}).get("family"):
        family = _family(header["model"]["family"], "the file's header")
        config = _config_from(family, None, header["model"].get("config") or {},
                              "the file's header")
    else:
        raise UserError(f"{path}: a weights file needs --model PRESET_OR_YAML (a preset such "
                        "as fmnist_400k, or a YAML model entry)")
    model = family.build_model(config)
    weights.load_weights(model, family, weights.read_weights_file(path), "raw", path.name)
    return LoadedModel(model.eval(), family, f"{path.name} (raw weights)")


def _rate_line(data: bytes, header: dict, bound: float, seconds: float, verb: str) -> str:
    n, dims = header["n_images"], header["n_images"] * math.prod(header["image_shape"])
    rate = lossless.rate(header)
    marginal = rate["marginal_bits"] / dims
    extra = (f"; the file also holds {rate['initial_bits']:,.0f} one-off initial bits "
             f"({rate['initial_bits'] / n:,.0f} per image here)" if rate["initial_bits"] else "")
    return (f"{verb} {n} images: {len(data):,} bytes, {8 * len(data) / dims:.4f} bits/dim for "
            f"the whole file, {marginal:.4f} bits/dim marginal{extra}; the model's bound on the "
            f"same images {bound:.4f} bits/dim ({100 * (marginal - bound) / bound:+.2f}%); "
            f"{seconds:.1f} s ({n / seconds:.1f} images/s)")


def compress_command(model_path: str, images_spec: str, out: str, preset_or_yaml: str | None,
                     data_dir: str | None, batch_size: int | None = None) -> int:
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be a positive integer")
    loaded = load_model(model_path, preset_or_yaml)
    image_set = load_images(images_spec, data_dir)
    shape = tuple(loaded.family.image_shape(loaded.model.config))
    if tuple(image_set.image_shape) != shape:
        raise UserError(f"{images_spec}: images of shape {list(image_set.image_shape)} (C, H, W), "
                        f"but {loaded.description} models {list(shape)}")
    images = torch.from_numpy(np.array(image_set.images))  # a writable copy
    record = {"family": loaded.family.name, "config": to_plain(loaded.model.config),
              "source": loaded.description, "images": image_set.description}
    start = time.perf_counter()
    try:
        data = lossless.compress(loaded.model, loaded.family, images, image_set.names,
                                 batch_size, model_record=record)
    except ValueError as error:
        raise UserError(f"{model_path}: {error}") from None
    seconds = time.perf_counter() - start
    atomic.write_bytes(out, data)
    header, _ = lossless.container.unpack(data, out)
    bound = model_bits_per_dim(loaded.model, images, header["codec_parameters"]["batch_size"])
    print(_rate_line(data, header, bound, seconds, f"{out}: compressed"), flush=True)
    return 0


def _output_path(out_dir: Path, name: str) -> Path:
    """OUTDIR/<name>.png, refusing a name that would leave OUTDIR."""
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise UserError(f"image name {name!r} would be written outside {out_dir}; refused")
    return out_dir.joinpath(*relative.parts).with_suffix(".png")


def _png_bytes(image) -> bytes:
    """(C, H, W) uint8 -> PNG bytes (mode L for one channel, RGB for three)."""
    from PIL import Image

    array = image.numpy()
    picture = (Image.fromarray(array[0], mode="L") if array.shape[0] == 1
               else Image.fromarray(array.transpose(1, 2, 0), mode="RGB"))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def decompress_command(model_path: str, in_path: str, out_dir: str,
                       preset_or_yaml: str | None) -> int:
    source = Path(in_path)
    try:
        data = source.read_bytes()
    except OSError as error:
        raise UserError(f"{source}: cannot be read ({error.strerror or error})") from None
    header, _ = lossless.container.unpack(data, str(source))
    loaded = load_model(model_path, preset_or_yaml, header)
    start = time.perf_counter()
    images, names, header = lossless.decompress(loaded.model, loaded.family, data, str(source),
                                                loaded.description)
    seconds = time.perf_counter() - start
    folder = Path(out_dir)
    paths = [_output_path(folder, name) for name in names]
    if len(set(paths)) != len(paths):
        raise UserError(f"{source}: two images would get the same file name in {folder}")
    for path, image in zip(paths, images):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, _png_bytes(image))
    bound = model_bits_per_dim(loaded.model, images, int(header["codec_parameters"]
                                                         ["batch_size"]))
    print(_rate_line(data, header, bound, seconds, f"{folder}: decompressed"), flush=True)
    return 0
