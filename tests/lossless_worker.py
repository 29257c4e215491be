"""Subprocess entry point for the cross-process codec test: one process compresses, another
decompresses, each building the models from the state dicts saved in DIR.

    python tests/lossless_worker.py encode DIR FAMILY:PRESET ...   # DIR/<family>.{pt,npy} -> .bin
    python tests/lossless_worker.py decode DIR FAMILY:PRESET ...   # DIR/<family>.bin -> .out.npy
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from harness.engine import lossless
from models import coding, registry

BATCH_SIZE = 2


def family_and_model(spec: str, state_path: Path):
    family_name, preset = spec.split(":")
    family = registry.get(family_name)
    if not family.autoregressive and not family.can(coding.TOP_DOWN_LATENTS):
        # until models/vdvae.py declares the capability itself (the codec reads capabilities)
        family = dataclasses.replace(family, capabilities=family.capabilities
                                     | {coding.TOP_DOWN_LATENTS})
    model = family.build_model(family.build_config(preset))
    model.load_state_dict(torch.load(state_path, weights_only=True))
    return family, model


def main() -> None:
    action, folder, specs = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    for spec in specs:
        stem = folder / spec.split(":")[0]
        family, model = family_and_model(spec, stem.with_suffix(".pt"))
        if action == "encode":
            images = torch.from_numpy(np.load(stem.with_suffix(".npy")))
            data = lossless.compress(model, family, images,
                                        [str(i) for i in range(len(images))], BATCH_SIZE)
            stem.with_suffix(".bin").write_bytes(data)
        else:
            source = stem.with_suffix(".bin")
            images, _, _ = lossless.decompress(model, family, source.read_bytes(), str(source))
            np.save(stem.with_suffix(".out.npy"), images.numpy())


if __name__ == "__main__":
    main()
