"""Seeded train/validation splits, bit-for-bit the ones the reference code draws.

The reference (openai/vdvae `data.py`) calls `np.random.seed(seed); np.random.permutation(n)`
on the legacy global generator. `np.random.RandomState(seed).permutation(n)` draws the same
Mersenne-Twister stream without touching global state, so other code's random numbers are not
disturbed by loading a dataset; tests check that the two agree.
"""

from __future__ import annotations

import numpy as np

from harness.errors import UserError


def seeded_permutation(n: int, seed: int) -> np.ndarray:
    """`np.random.seed(seed); np.random.permutation(n)` without touching the global generator."""
    return np.random.RandomState(seed).permutation(n)  # (n,) int64


def split_last(n: int, seed: int, held_out: int, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) indices: the last `held_out` of a seeded permutation are held out.

    The MNIST family, ImageNet-32/64 (seed 42) and FFHQ-256 (seed 5) use this form:
    `train = x[perm[:-k]]`, `valid = x[perm[-k:]]`.
    """
    check_sizes(n, held_out, what=what)
    perm = seeded_permutation(n, seed)
    return perm[: n - held_out], perm[n - held_out:]


def split_first(n: int, seed: int, held_out: int, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) indices: the first `held_out` of a seeded permutation are held out.

    CIFAR-10 uses this form (sklearn `train_test_split(test_size=5000, random_state=11172018)`
    in the reference): `valid = x[perm[:5000]]`, `train = x[perm[5000:]]`.
    """
    check_sizes(n, held_out, what=what)
    perm = seeded_permutation(n, seed)
    return perm[held_out:], perm[:held_out]


def check_sizes(n: int, *held_out: int, what: str, allow_empty_train: bool = False) -> None:
    """Every held-out size is a non-negative int and at least one image is left to train on
    (with `allow_empty_train`, for a set that may be evaluated only: no more than all of them)."""
    for size in held_out:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise UserError(f"{what}: split sizes must be non-negative integers, got {size!r}")
    if allow_empty_train and sum(held_out) <= n:
        return
    if sum(held_out) >= n:
        raise UserError(f"{what}: only {n} images, too few for held-out splits of "
                        f"{' + '.join(str(s) for s in held_out)} and a non-empty train split; "
                        "lower validation_size/test_size")
