"""Numbers that pass `validate` and used to crash `run`, and values that were silently capped:
each is refused in one line before anything runs, or said out loud."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from data_fixtures import write_idx_dataset
from harness.checks import INT_LIMIT, Mismatch, NonNegativeInt, PositiveInt, convert
from harness.cli import main

HUGE = "1" + "0" * 30
EXPERIMENT = """\
name: limits
data: {{dataset: mnist, data_dir: {data}, options: {{validation_size: 8}}, test_images: 16}}
models:
  vdvae: {{family: vdvae, preset: fmnist_tiny}}
train: {{batch_size: 8, max_steps: 2, progress: "off"}}
eval: {{batch_size: 16, iw_k: 0, n_grid_samples: 0, sample_batch_size: 2}}
runner: {{jobs: 1, threads_per_job: 1, report: false, estimate: flops, flops_per_s: 1.0e+10}}
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("limits")
    write_idx_dataset(root / "data" / "mnist", 40, 16)  # 32 train + 8 validation, 16 test
    path = root / "limits.yaml"
    path.write_text(EXPERIMENT.format(data=root / "data"))
    return path


def harness(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def one_line(code: int, err: str) -> str:
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("value", [10**30, 2**63, -(2**63) - 1, 2**70])
def test_an_integer_beyond_64_bits_is_refused_by_the_check(value):
    with pytest.raises(Mismatch, match="fits in 64 bits"):
        convert(value, PositiveInt | None)
    with pytest.raises(Mismatch, match="fits in 64 bits"):
        convert(value, int)


@pytest.mark.parametrize("value", [0, 2**63 - 1, 10**18])
def test_an_integer_within_64_bits_passes(value):
    assert convert(value, NonNegativeInt) == value and INT_LIMIT == 2**63


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("key", ["train.batch_size", "runner.jobs", "runner.threads_per_job",
                                 "eval.batch_size", "models.vdvae.config.width",
                                 "data.train_images", "data.options.validation_size",
                                 "models.vdvae.sweep.grid.effective_depth"])
def test_a_huge_number_is_one_line_from_validate_and_run(experiment, tmp_path, command, key):
    extra = ["--dry-run", "--results", str(tmp_path / "r")] if command == "run" else []
    code, _, err = harness(command, str(experiment), "--set", f"{key}={HUGE}", *extra)
    assert key in one_line(code, err)
    assert not (tmp_path / "r").exists()


def test_jobs_far_beyond_the_cells_plan_without_crashing(experiment, tmp_path):
    """`--jobs` and runner.jobs in 64 bits but far beyond any machine: the plan uses at most
    one worker per cell (it used to allocate a list of `jobs` workers)."""
    for args in (["--jobs", str(2**62)], ["--set", f"runner.jobs={2**62}"]):
        code, out, err = harness("run", str(experiment), "--dry-run", *args)
        assert code == 0, err
        assert "estimated total:" in out


def test_a_batch_too_large_to_count_is_one_line(experiment, tmp_path):
    """A batch within 64 bits whose tensors overflow them (the memory count on the meta
    device), without data to compare it with."""
    code, _, err = harness("run", str(experiment), "--dry-run", "--set",
                           "data.dataset=cifar10", "--set", f"train.batch_size={2**62}",
                           "--set", "models.vdvae.preset=cifar10_tiny")
    assert "cannot build its model to count its training memory at train.batch_size" \
        in one_line(code, err), err


def test_a_model_too_large_to_build_is_one_line(experiment):
    code, _, err = harness("run", str(experiment), "--dry-run", "--set",
                           f"models.vdvae.config.width={2**40}")
    assert "model 'vdvae' cannot be built" in one_line(code, err)


def test_a_batch_larger_than_the_training_set_is_refused_before_running(experiment, tmp_path):
    code, _, err = harness("run", str(experiment), "--results", str(tmp_path / "r"),
                           "--set", "train.batch_size=33")
    assert "train.batch_size (33) exceeds the 32 training images" in one_line(code, err)
    assert not (tmp_path / "r").exists()
    code, _, err = harness("run", str(experiment), "--dry-run", "--set", "train.batch_size=32")
    assert code == 0, err  # the whole set in one batch is fine


@pytest.mark.parametrize("key, split, available", [("train_images", "train", 32),
                                                   ("validation_images", "validation", 8),
                                                   ("test_images", "test", 16)])
def test_asking_for_more_images_than_a_split_has_says_so(experiment, key, split, available):
    code, out, err = harness("run", str(experiment), "--dry-run", "--set",
                             f"data.{key}=9999999")
    assert code == 0, err
    assert (f"note: data.{key} is 9,999,999 but mnist's {split} split has {available:,} "
            f"images: all {available:,} are used") in out
    code, out, _ = harness("run", str(experiment), "--dry-run", "--set", f"data.{key}=8")
    assert code == 0 and "note: data." not in out  # within the split: nothing to say
