"""Paths: experiment and cell names, `--results`, dataset `path` options and symlinks planted in
a results folder cannot make the harness write outside the results folder; a file where an
output folder should be is one line, not a traceback.

$HOME, $TMPDIR and $XDG_CACHE_HOME point at sandboxes of their own inside the watched folder, so
a stray write to the home directory, a cache or the temporary folder fails the tests too."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest

from data_fixtures import write_idx_dataset, write_png_folder
from harness.cli import main
from harness.run import runner  # before any sandbox: importing it writes matplotlib's font cache

CODEC_ONLY = """\
name: {name}
data:
  dataset: {dataset}
  data_dir: {data}
  options: {options}
  test_images: 8
models:
  speedy: {{family: pixelcnn, preset: tiny, kind: speed}}
sampling_speed: {{batch_sizes: [1], repeats: 1, warmup: 0, methods: [cached]}}
codecs: [png]
runner: {{jobs: 1, threads_per_job: 1, report: {report}, estimate: flops, flops_per_s: 1.0e+10}}
"""


REPO = Path(__file__).resolve().parents[2]


def harness(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """tmp/work is the working directory; tmp/data holds an MNIST and a PNG folder; tmp/home,
    tmp/tmp and tmp/cache are $HOME, $TMPDIR and $XDG_CACHE_HOME."""
    write_idx_dataset(tmp_path / "data" / "mnist", 16, 8)
    write_png_folder(tmp_path / "data" / "pictures", 10, 8)
    for name, variable in (("work", None), ("home", "HOME"), ("tmp", "TMPDIR"),
                           ("cache", "XDG_CACHE_HOME")):
        (tmp_path / name).mkdir()
        if variable:
            monkeypatch.setenv(variable, str(tmp_path / name))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    monkeypatch.delenv("HARNESS_DATA", raising=False)  # the default data root is in $HOME
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HARNESS_DOWNLOAD", "0")
    return tmp_path


def experiment(sandbox: Path, name="paths", dataset="mnist", options="{validation_size: 2}",
               report="false") -> Path:
    path = sandbox / "work" / "exp.yaml"
    path.write_text(CODEC_ONLY.format(name=name, dataset=dataset, data=sandbox / "data",
                                      options=options, report=report))
    return path


@pytest.mark.parametrize("name", ["..", "../up", "a/../../b", "/etc/x", "a/b", ".hidden",
                                  "ok\u2028bad", "a" * 49])
def test_experiment_names_that_are_paths_are_refused(sandbox, name):
    path = experiment(sandbox, name=repr(name).replace("'", '"'))
    before = snapshot(sandbox)
    code, err = harness("run", str(path))
    assert code == 2 and len(err.splitlines()) == 1 and "experiment name" in err, err
    assert snapshot(sandbox) == before


@pytest.mark.parametrize("model", ["../x", "..", "/abs", "codec_png", "a.b"])
def test_model_names_that_are_paths_are_refused(sandbox, model):
    path = experiment(sandbox)
    path.write_text(path.read_text().replace("speedy:", f'"{model}":'))
    before = snapshot(sandbox)
    code, err = harness("run", str(path))
    assert code == 2 and "model name" in err, err
    assert snapshot(sandbox) == before


@pytest.mark.parametrize("results", ["../elsewhere/r", "r/../r2", "{abs}/abs_results"])
def test_every_write_lands_inside_the_results_folder(sandbox, results):
    path = experiment(sandbox, report="true")
    results = results.format(abs=sandbox)
    before = snapshot(sandbox)
    code, err = harness("run", str(path), "--results", results)
    assert code == 0, err
    root = (sandbox / "work" / results).resolve()
    written = snapshot(sandbox) - before
    assert written and not outside_of(root, written, sandbox), outside_of(root, written, sandbox)


def outside_of(root: Path, written: set[Path], sandbox: Path) -> list[Path]:
    """What was written outside `root`; the one write elsewhere by design is the data
    directory's hash cache (checksums.json)."""
    return sorted(p for p in written if root.resolve() not in p.resolve().parents
                  and p != sandbox / "data" / "checksums.json")


@pytest.mark.parametrize("where", ["results", "home", "tmp", "cache"])
def test_a_stray_write_is_caught(sandbox, monkeypatch, where):
    """The check of the test above fails on a write to $HOME, $TMPDIR or $XDG_CACHE_HOME (one
    planted during the run), and passes on one inside the results folder."""
    target = {"results": sandbox / "work" / "r" / "extra",
              "home": Path.home() / ".stray", "tmp": Path(tempfile.gettempdir()) / "stray",
              "cache": Path(os.environ["XDG_CACHE_HOME"]) / "stray"}[where]
    plan = runner.print_plan

    def leaky(*args, **kwargs):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("stray")
        return plan(*args, **kwargs)

    monkeypatch.setattr(runner, "print_plan", leaky)
    path = experiment(sandbox)
    before = snapshot(sandbox)
    assert harness("run", str(path), "--results", "r")[0] == 0
    outside = outside_of(sandbox / "work" / "r", snapshot(sandbox) - before, sandbox)
    assert outside == ([] if where == "results" else [target])


@pytest.mark.parametrize("option", ["../data/pictures", "{data}/pictures", "../../{name}/data/pictures"])
def test_dataset_path_options_are_read_not_written(sandbox, option):
    option = option.format(data=sandbox / "data", name=sandbox.name)
    path = experiment(sandbox, dataset="image_folder",
                      options=f'{{path: "{option}", validation_size: 1, test_size: 8}}')
    data_before = {p: p.read_bytes() for p in snapshot(sandbox / "data")}
    code, err = harness("run", str(path), "--results", "r")
    assert code == 0, err
    assert {p: p.read_bytes() for p in snapshot(sandbox / "data")} == data_before
    assert all((sandbox / "work" / "r").resolve() in p.resolve().parents
               for p in snapshot(sandbox) - set(data_before) - {sandbox / "work" / "exp.yaml"})


@pytest.mark.parametrize("planted", ["cells/codec_png", "cells/speedy",
                                     "cells/codec_png/status.json", "summary.csv",
                                     "cells/speedy/metrics.jsonl"])
def test_symlinks_planted_in_the_results_folder_write_nothing_outside(sandbox, planted):
    path = experiment(sandbox)
    outside = sandbox / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched")
    link = sandbox / "work" / "r" / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    target = outside if "." not in link.name else outside / "keep.txt"
    link.symlink_to(target)
    code, err = harness("run", str(path), "--results", "r")
    assert code in (0, 2), err
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "untouched"
    if code == 2:
        assert len(err.splitlines()) == 1 and "outside" in err, err


# Regression: `re.match` with `$` accepts a trailing newline, so `name: "x\n"` ran into a folder
# called 'x\n' (and a model 'm\n' named cells with a newline in them).
@pytest.mark.parametrize("where", ["name", "model"])
def test_a_trailing_newline_in_a_name_is_refused(sandbox, where):
    if where == "name":
        path = experiment(sandbox, name='"x\\n"')
    else:
        path = experiment(sandbox)
        path.write_text(path.read_text().replace("speedy:", '"speedy\\n":'))
    before = snapshot(sandbox)
    code, err = harness("run", str(path))
    assert code == 2 and len(err.splitlines()) == 1 and "name" in err, err
    assert snapshot(sandbox) == before


# --------------------------------------------------------------------------- a file in the way


@pytest.mark.parametrize("given", ["FILE", "FILE/sub", "FILE/sub/deeper"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_results_path_through_a_file_is_one_line(sandbox, given, dry_run):
    path = experiment(sandbox)
    (sandbox / "work" / "FILE").write_text("not a folder")
    before = snapshot(sandbox)
    code, err = harness("run", str(path), "--results", given, *(["--dry-run"] if dry_run else []))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"harness: error: --results {given}: ") and "not a folder" in err, err
    assert snapshot(sandbox) == before


def test_a_file_named_like_the_default_results_folder_is_one_line(sandbox):
    path = experiment(sandbox)
    (sandbox / "work" / "results").write_text("not a folder")
    code, err = harness("run", str(path))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "results folder results/paths: results is a file" in err and "--results" in err, err


@pytest.mark.parametrize("given", ["FILE", "FILE/sub"])
def test_evaluate_into_a_file_is_one_line(sandbox, given):
    weights = REPO / "examples" / "vdvae_tiny_cifar" / "vdvae_tiny_cifar-model-ema.th"
    (sandbox / "work" / "FILE").write_text("not a folder")
    before = snapshot(sandbox)
    code, err = harness("evaluate", str(weights), "--model", "cifar10_tiny", "--dataset",
                        "image_folder", "--set", f"path={sandbox / 'data' / 'pictures'}",
                        "--results", given)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"harness: error: --results {given}: ") and "not a folder" in err, err
    assert snapshot(sandbox) == before


@pytest.fixture
def results(sandbox) -> Path:
    """A finished codec-only run in work/r (report not built)."""
    assert harness("run", str(experiment(sandbox)), "--results", "r")[0] == 0
    return sandbox / "work" / "r"


@pytest.mark.parametrize("given", ["FILE", "FILE/sub"])
def test_a_report_out_through_a_file_is_one_line(sandbox, results, given):
    (sandbox / "work" / "FILE").write_text("not a folder")
    before = snapshot(sandbox)
    code, err = harness("report", str(results), "--out", given)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"harness: error: --out {given}: ") and "not a folder" in err, err
    assert snapshot(sandbox) == before


def test_a_file_inside_the_report_folder_is_one_line(sandbox, results):
    """The class, past the up-front check: a file where the report writes a folder (out/<exp>)
    is one line naming that path."""
    (sandbox / "work" / "out").mkdir()
    (sandbox / "work" / "out" / "paths").write_text("not a folder")
    code, err = harness("report", str(results), "--out", "out")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("harness: error: out/paths") and "Not a directory" in err, err
