"""Write examples/vdvae_tiny_cifar/ from the public reference's tiny CIFAR bundle
(`vdvae_tiny_cifar.pt`: config, state dict, images, noise, expected values) in the layouts a
user has: the weights as the reference's `*-model-ema.th` (a plain state dict), the images as
PNGs, and the reference's own per-image figures as JSON.

    python scripts/export_reference_example.py BUNDLE [--out examples/vdvae_tiny_cifar]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from harness import atomic
from models.vdvae_presets import PRESETS

WEIGHTS = "vdvae_tiny_cifar-model-ema.th"
EXPECTED = "expected.json"


def export(bundle_path: Path, out: Path) -> None:
    bundle = torch.load(bundle_path, weights_only=True)
    config = bundle["config"]
    preset = PRESETS["cifar10_tiny"]
    for key, value in preset.items():  # the preset a user passes is this model's architecture
        assert key in config and (config[key] == value if not isinstance(value, float)
                                  else abs(config[key] - value) < 1e-9), (key, value)
    (out / "images").mkdir(parents=True, exist_ok=True)
    torch.save(dict(bundle["state_dict"]), out / WEIGHTS)
    for index, image in enumerate(bundle["images_nhwc_uint8"].numpy()):
        Image.fromarray(image).save(out / "images" / f"{index:03d}.png")
    expected = {name: values.double().tolist() for name, values in bundle["expected"].items()}
    atomic.write_json(out / EXPECTED, {"source": bundle_path.name, "config": config,
                                       "per_image": expected})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, default=Path("examples/vdvae_tiny_cifar"))
    args = parser.parse_args(argv)
    export(args.bundle, args.out)
    print(f"wrote {args.out}/{WEIGHTS}, {args.out}/images/*.png, {args.out}/{EXPECTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
