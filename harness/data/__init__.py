"""Datasets by name: uint8 `(N, C, H, W)` train / validation / test splits plus provenance.

    from harness.data import load_dataset
    splits = load_dataset("fashion_mnist")          # 55,000 / 5,000 / 10,000, (1, 28, 28)
    batch = splits.train[torch.arange(32)]          # uint8 (32, 1, 28, 28)

Splits follow the openai/vdvae reference exactly (its permutations and seeds; each module says how).
Large sets are `LazyImages` over memory-mapped files: index batches, never convert the whole set.
`harness datasets` prints where every dataset was found, its split sizes and checksum status.
"""

from harness.data import cifar, ffhq, folder, idx, imagenet  # noqa: F401  (fill the registry)
from harness.data.lazy import LazyImages
from harness.data.paths import data_dirs
from harness.data.registry import DatasetSplits, dataset_names, load_dataset
from harness.data.table import print_dataset_table

__all__ = ["DatasetSplits", "LazyImages", "data_dirs", "dataset_names", "load_dataset",
           "print_dataset_table"]
