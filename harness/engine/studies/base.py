"""Evaluation as named studies: what a study declares, what it is given, and the registry.

A study is one measurement of a trained model (bits/dim, KL per layer, the IW bound, a sample
grid, ...). It declares

* `needs`: capabilities its family must have (open strings, `models.registry`); a family
  without one skips the study, and the skip is recorded with its reason;
* `reads`: the shared inputs it uses, each computed once per evaluation and shared by every
  study that reads it: `LIKELIHOOD` (the per-image arrays of one likelihood pass over the test
  images, per weights), `POSTERIOR_MEANS` (collected in that same pass), `SAMPLES` (one sample
  set per cell, saved as `samples.npy`), `TRAIN_IMAGES` (the cell's training images);
* `writes`: the metrics and files it produces (documentation and the plan);
* `scope`: `"weights"` runs once per evaluated weights (raw, EMA), `"cell"` once per cell on the
  sampling model (EMA when evaluated);
* `enabled(config)`: the eval-config switch that turns it off (e.g. `iw_k` 0);
* `n_samples(config, n_test)`: how many images of the shared sample set it needs, given the
  number of test images;
* `estimate_s(cost)`: its expected seconds, from the plan's measured costs (`StudyCost`).

Adding a study is one module that ends with `register(Study(...))` plus one import line in
`harness/engine/studies/__init__.py`; docs/architecture.md has the recipe and
tests/test_studies.py registers a toy study the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from harness.engine.config import EvalConfig

# The shared inputs a study may read.
LIKELIHOOD = "likelihood"
POSTERIOR_MEANS = "posterior_means"
SAMPLES = "samples"
TRAIN_IMAGES = "train_images"
INPUTS = (LIKELIHOOD, POSTERIOR_MEANS, SAMPLES, TRAIN_IMAGES)


@dataclass(frozen=True)
class StudyCost:
    """What a study's time estimate may use, filled by the plan (seconds, per the plan's probe
    or FLOP rate). `sample_call_s(n)` is one call of the sampler that draws the sample set."""

    n_test: int
    forward_s: float                        # one inference forward, per image
    pass_s: Callable[[int], float]          # batch -> one inference forward of that batch
    sample_call_s: Callable[[int], float]   # n -> drawing n samples with the set's sampler
    n_train: int | None = None


@dataclass
class StudyContext:
    """What a study is given. For a `"weights"` study: `weights` names the weights and
    `likelihood` holds that pass's per-image arrays (float64, test-split order; `moments` the
    posterior-mean statistics when a study reads POSTERIOR_MEANS). For a `"cell"` study:
    `weights` is None and `samples()` / `train_images()` give the shared inputs (computed on
    first use)."""

    model: nn.Module
    family: Any                      # models.registry.Family
    images: Any                      # uint8 (N, C, H, W) test images, indexed batch by batch
    config: EvalConfig
    out_dir: Path
    weights: str | None = None
    likelihood: dict[str, np.ndarray] | None = None
    eval_images_per_s: float | None = None
    moments: Any = None              # harness.engine.passes.LatentMoments | None
    samples: Callable[[], np.ndarray] = field(default=lambda: None)
    train_images: Callable[[], Any] = field(default=lambda: None)
    label: str = ""                  # the cell's name, for progress lines
    cache_dir: Path | None = None    # run-wide cache (results/.cache): inputs shared by cells
    show_progress: bool = True       # progress lines on stderr (off: train.progress "off")

    @property
    def base(self) -> dict[str, Any]:
        """The keys every row of a weights study carries."""
        return {"split": "test", "weights": self.weights} if self.weights else {}


@dataclass(frozen=True)
class Study:
    name: str
    scope: Literal["weights", "cell"]
    run: Callable[[StudyContext], list[dict[str, Any]]]
    needs: frozenset[str] = frozenset()
    reads: frozenset[str] = frozenset()
    writes: tuple[str, ...] = ()
    description: str = ""
    enabled: Callable[[EvalConfig], bool] = lambda config: True
    n_samples: Callable[[EvalConfig, int], int] = lambda config, n_test: 0
    estimate_s: Callable[[StudyCost, EvalConfig], float] = lambda cost, config: 0.0

    def __post_init__(self):
        assert self.scope in ("weights", "cell"), self.scope
        assert set(self.reads) <= set(INPUTS), (self.name, self.reads)
        assert not ({LIKELIHOOD, POSTERIOR_MEANS} & set(self.reads)) or self.scope == "weights", \
            f"study {self.name}: the likelihood pass is per weights"

    def skip_reason(self, family, config: EvalConfig) -> str | None:
        """Why this study does not run for `family` under `config`, or None when it runs."""
        missing = sorted(c for c in self.needs if not family.can(c))
        if missing:
            return f"the {family.name} family lacks {', '.join(missing)}"
        if not self.enabled(config):
            return "turned off in the eval config"
        return None


class StudySkipped(Exception):
    """Raised by a study's `run` when this cell cannot make it (e.g. too few test images); the
    evaluation records the study as skipped with the message as its reason and goes on."""


STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    assert study.name not in STUDIES or STUDIES[study.name] == study, \
        f"a study named {study.name} is already registered"
    STUDIES[study.name] = study
    return study


def unregister(name: str) -> None:
    STUDIES.pop(name, None)


def registered() -> list[Study]:
    """Every study, in registration order (the order their rows appear in)."""
    return list(STUDIES.values())
