"""Real lossless codecs from the model on the first `eval.codec_images` test images
(harness.engine.lossless: range coding with an autoregressive model's exact categoricals,
bits-back ANS with a hierarchical VAE; Townsend et al. 2019, Section 2): the file's real
bits/dim beside the model's bits/dim on the same images, the initial bits, encode and decode
images/s and a bit-exact round-trip check (rows: harness.engine.lossless.rows). One study per
codec, each needing the capability its codec codes with; `eval.codec_images` 0 turns both off.
"""

from __future__ import annotations

import torch

from harness.engine.studies.base import Study, StudyContext, StudyCost, StudySkipped, register
from models import coding

METRICS = ("codec_bits_per_dim", "codec_file_bits_per_dim", "model_bits_per_dim",
           "codec_overhead_percent", "codec_initial_bits", "codec_initial_bits_per_image",
           "codec_encode_images_per_s", "codec_decode_images_per_s", "codec_roundtrip_exact")
# Encoding and decoding one image with bits-back cost about this many inference forwards of the
# VAE (encoder and two top-down passes each way, the latents' and pixels' tables and the coder).
BITS_BACK_FORWARDS = 14


def _n_images(config, n_test: int) -> int:
    return min(config.codec_images, n_test)


def run(context: StudyContext) -> list[dict]:
    try:  # the entropy coder is imported only where a codec runs (not on every machine)
        from harness.engine.lossless.rows import codec_rows
    except ImportError as error:
        raise StudySkipped(f"needs the {error.name} package (pip install constriction)") \
            from None
    n = _n_images(context.config, context.images.shape[0])
    images = torch.as_tensor(context.images[:n])
    rows = codec_rows(context.model, context.family, images, context.config.codec_batch_size)
    return [{**row, "split": "test"} for row in rows]


def _range_estimate_s(cost: StudyCost, config) -> float:
    # encoding runs the cached sampler's loop on the true pixels, decoding on the decoded ones
    return 2.0 * cost.sample_call_s(_n_images(config, cost.n_test))


def _bits_back_estimate_s(cost: StudyCost, config) -> float:
    return BITS_BACK_FORWARDS * _n_images(config, cost.n_test) * cost.forward_s


for _name, _capability, _estimate, _what in (
        ("lossless_range", coding.STEPWISE_PROBABILITIES, _range_estimate_s,
         "range coding with the exact categoricals"),
        ("lossless_bits_back", coding.TOP_DOWN_LATENTS, _bits_back_estimate_s,
         "bits-back ANS with the latents")):
    register(Study(
        name=_name, scope="cell", run=run, needs=frozenset({_capability}), writes=METRICS,
        description=f"a real lossless codec: {_what}",
        enabled=lambda config: config.codec_images > 0, estimate_s=_estimate))
