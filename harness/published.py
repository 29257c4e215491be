"""Published numbers shown beside our results for context (never mixed into our rows).

Shared by the runner (where to get a released checkpoint) and the report (the numbers beside
ours); plain data, no torch. Sources:

* VDVAE depth ablation: Child 2021, "Very Deep VAEs Generalize Autoregressive Models and Can
  Outperform Them on Images", the effective-stochastic-depth experiment (ImageNet-32, one
  48-layer network with a fixed 41M parameters, 600k steps).
* Test bits/dim of the PixelCNN family and VDVAE: van den Oord et al. 2016 (Gated PixelCNN),
  Salimans et al. 2017 (PixelCNN++), as tabulated in Child 2021.
* Lossless codecs: per-image Pillow encodings, headers included (Kingma et al. 2019, Bit-Swap).
* CPU-scale prototype: the team's first Fashion-MNIST sanity run of the depth sweep, 1,600
  steps (a throwaway script before this harness; its numbers are in docs/benchmarks.md).

Every number here is on a different dataset and/or scale from a CPU-scale sweep; the report
labels them so.
"""

from __future__ import annotations

# (effective stochastic depth, test bits/dim) on ImageNet-32 (old benchmark), 41M params, 600k steps.
DEPTH_ABLATION_IMAGENET32: tuple[tuple[int, float], ...] = (
    (3, 4.30), (6, 4.18), (12, 4.06), (24, 3.98), (48, 3.95),
)
DEPTH_ABLATION_CAPTION = ("VDVAE depth ablation, Child 2021: ImageNet-32 (old benchmark), one "
                          "48-layer network, fixed 41M parameters, 600k steps")

PUBLISHED_DATASETS: tuple[str, ...] = ("CIFAR-10", "ImageNet-32", "ImageNet-64")
# model -> test bits/dim per dataset in PUBLISHED_DATASETS order; None = not published.
PUBLISHED_BITS_PER_DIM: tuple[tuple[str, tuple[float | None, ...]], ...] = (
    ("PixelCNN", (3.14, None, None)),
    ("PixelRNN", (3.00, 3.86, 3.63)),
    ("Gated PixelCNN", (3.03, 3.83, 3.57)),
    ("PixelCNN++", (2.92, None, None)),
    ("VDVAE", (2.87, 3.80, 3.52)),
)
PUBLISHED_CAPTION = ("Published test bits/dim (van den Oord et al. 2016; Salimans et al. 2017; "
                     "Child 2021): full-size models trained for days on many GPUs")

CODEC_DATASETS: tuple[str, ...] = ("8-bit MNIST", "CIFAR-10", "ImageNet-32")
CODEC_BITS_PER_DIM: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("PNG", (2.80, 5.87, 6.39)),
    ("WebP lossless", (2.10, 4.61, 5.29)),
    ("LZMA", (1.49, 6.09, 6.15)),
    ("Bit-Swap (learned)", (1.29, 3.82, 4.50)),
)
CODEC_CAPTION = "Lossless codecs, per-image, headers included (Kingma et al. 2019)"

# (G, test bits/dim raw weights, 95% CI half-width, EMA 0.999 bits/dim) on Fashion-MNIST.
CPU_PROTOTYPE: tuple[tuple[int, float, float, float], ...] = (
    (1, 3.611, 0.019, 4.975),
    (2, 3.564, 0.019, 5.087),
    (4, 3.507, 0.019, 5.079),
    (7, 3.510, 0.019, 5.000),
    (14, 3.477, 0.019, 5.029),
)
CPU_PROTOTYPE_CAPTION = ("CPU-scale prototype (a script before this harness): Fashion-MNIST, 402,735 "
                         "parameters, 1,600 steps, far from converged; paired G=1 minus G=14 = "
                         "+0.134 ± 0.002 bits/dim")

CONTEXT_NOTE = ("Published numbers are for context only: different datasets, model sizes and "
                "training budgets; they are not comparable with this experiment's rows.")

# The reference's released checkpoints (openai/vdvae README): preset -> (dataset the preset is
# evaluated on, its label, published test bits/dim (Child 2021), the EMA weights file, the raw
# weights file or None). FFHQ-256 is scored on 5-bit data; ImageNet is the old "small ImageNet"
# benchmark. CIFAR-10 was released as EMA weights only, one file per seed (seeds 0-3 give 2.879,
# 2.842, 2.898, 2.864; the paper's 2.87 is their mean); seed 0 is listed.
PUBLISHED_CHECKPOINTS: dict[str, tuple[str, str, float, str, str | None]] = {
    "cifar10": ("cifar10", "CIFAR-10", 2.87, "cifar10-seed0-iter-900000-model-ema.th", None),
    "imagenet32": ("imagenet32", "ImageNet-32 (old)", 3.80,
                   "imagenet32-iter-1700000-model-ema.th", "imagenet32-iter-1700000-model.th"),
    "imagenet64": ("imagenet64", "ImageNet-64 (old)", 3.52,
                   "imagenet64-iter-1600000-model-ema.th", "imagenet64-iter-1600000-model.th"),
    "ffhq256": ("ffhq256", "FFHQ-256, 5-bit", 0.61, "ffhq256-iter-1700000-model-ema.th",
                "ffhq256-iter-1700000-model.th"),
    "ffhq1024": ("ffhq1024", "FFHQ-1024", 2.42, "ffhq1024-iter-1700000-model-ema.th",
                 "ffhq1024-iter-1700000-model.th"),
}
CHECKPOINTS_URL = "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets/"
# imagenet64 and cifar10 files are under vdvae-assets-2/ instead (openai/vdvae README).
CHECKPOINT_FOLDERS = {"imagenet64": "vdvae-assets-2/", "cifar10": "vdvae-assets-2/"}


def checkpoint_url(preset: str, file_name: str) -> str:
    """Where the reference published `file_name` of `preset`."""
    base = CHECKPOINTS_URL
    if preset in CHECKPOINT_FOLDERS:
        base = base.replace("vdvae-assets/", CHECKPOINT_FOLDERS[preset])
    return base + file_name
