"""Fuzzed experiment files: mutations of every shipped experiment, up to three places at once
(keys dropped, renamed, retyped, moved, nested; odd values), each run through
`harness run --dry-run` in this process with the FLOP-rate estimate (no probe). Each is a plan or
one line `harness: error: ...` with exit 2, never a traceback, and nothing is written outside the
results folder: not next to the file, not in $HOME, $TMPDIR or $XDG_CACHE_HOME (each pointed at
a sandbox of its own and watched), not in the data directory but for its checksum cache."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.run import runner  # before any sandbox: importing it writes matplotlib's font cache

from .fuzz_yaml import dump, mutate_text, mutate_tree

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.name for p in (REPO / "experiments").glob("*.yaml"))
# The parameter-matched sweeps take seconds per dry run even with the plan's counts cached, so
# the cheaper files carry most examples; every shipped file is fuzzed.
DEAR = ["depth_sweep.yaml", "depth_sweep_cifar10.yaml", "depth_sweep_imagenet32.yaml"]
CHEAP = [name for name in SHIPPED if name not in DEAR]
# The published-checkpoint files plan only with the released weights on disk: without them a
# dry run ends in one line saying where to get them, so the two files that plan carry more.
WEIGHTED = CHEAP + 5 * [name for name in CHEAP if not name.startswith("published")]
TEXTS = {name: (REPO / "experiments" / name).read_text(encoding="utf-8") for name in SHIPPED}
TREES = {name: yaml.safe_load(text) for name, text in TEXTS.items()}
NO_PROBE = ["--set", "runner.estimate=flops", "--set", "runner.flops_per_s=1e9"]


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> dict[str, Path]:
    """Sandboxes for $HOME, $TMPDIR, $XDG_CACHE_HOME and the harness data directory."""
    root = tmp_path_factory.mktemp("watched")
    folders = {name: root / name for name in ("home", "tmp", "cache", "data")}
    for folder in folders.values():
        folder.mkdir()
    return folders


@pytest.fixture
def sandboxed(watched, monkeypatch) -> dict[str, Path]:
    monkeypatch.setenv("HOME", str(watched["home"]))
    monkeypatch.setenv("TMPDIR", str(watched["tmp"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(watched["cache"]))
    monkeypatch.setenv("HARNESS_DATA", str(watched["data"]))
    monkeypatch.setenv("HARNESS_DOWNLOAD", "0")
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    return watched


def files_under(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


def written_outside(before: set[Path], after: set[Path], results: Path,
                    data: Path) -> list[Path]:
    """Files that appeared outside `results`; the data directory's checksum cache is the one
    write elsewhere by design (harness.data.checksum)."""
    return sorted(p for p in after - before
                  if results not in p.parents and p != data / "checksums.json")


def dry_run(path: Path, results: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            contextlib.chdir(path.parent):
        try:
            code = main(["run", str(path), "--dry-run", "--results", str(results), *NO_PROBE])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def check_outcome(path: Path, what: str, watched: dict[str, Path]) -> str:
    """'valid' or 'refused', after asserting the outcome is one of them and wrote nothing."""
    results = path.parent / "results"
    before = files_under(path.parent, *watched.values())
    code, out, err = dry_run(path, results)
    assert code in (0, 2), (what, code, err)
    outside = written_outside(before, files_under(path.parent, *watched.values()), results,
                              watched["data"])
    assert not outside, (what, outside)
    assert not results.exists(), what  # a dry run writes nothing at all
    if code == 0:
        assert "estimated total:" in out, (what, out)
        return "valid"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), (what, err)
    return "refused"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def mutated(name: str, data) -> tuple[str, str]:
    """The file's text after one text mutation, or one to three tree mutations at once."""
    if data.draw(st.integers(0, 4)) == 0:
        return mutate_text(TEXTS[name], data)
    doc, done = TREES[name], []
    for _ in range(data.draw(st.integers(1, 3))):
        if not isinstance(doc, dict) or not doc:
            break
        doc, what = mutate_tree(doc, data)
        done.append(what)
    return dump(doc), "; ".join(done)


@pytest.mark.slow
def test_every_shipped_file_plans(tmp_path, sandboxed):
    """The unmutated files: a plan, or (the published checkpoints are not shipped) one line
    saying where to download them."""
    for name in SHIPPED:
        folder = tmp_path / name.removesuffix(".yaml")
        folder.mkdir()
        path = _write(folder, name, TEXTS[name])
        before = files_under(folder, *sandboxed.values())
        code, out, err = dry_run(path, folder / "results")
        assert code == 0 or (code == 2 and name.startswith("published")
                             and "download it from" in err), (name, err)
        assert not written_outside(before, files_under(folder, *sandboxed.values()),
                                   folder / "results", sandboxed["data"]), name


def fuzz_files(names: list[str], examples: int, sandboxed, tmp_path_factory, capsys) -> None:
    """Run `examples` mutated files of `names`; both outcomes must occur (the fuzz is not
    vacuous). The counts are printed for docs/reliability.md (run with -s)."""
    outcomes: dict[str, int] = {}

    @fuzz(examples)
    @given(st.sampled_from(names), st.data())
    def one(name, data):
        text, what = mutated(name, data)
        folder = tmp_path_factory.mktemp("fuzz")
        outcome = check_outcome(_write(folder, name, text), f"{name}: {what}", sandboxed)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one()
    with capsys.disabled():
        print(f"\nexperiment fuzz over {', '.join(sorted(set(names)))}: "
              f"{sum(outcomes.values())} files, {outcomes}")
    assert outcomes.get("refused", 0) >= examples // 10, outcomes
    assert outcomes.get("valid", 0) >= examples // 20, outcomes


def test_mutated_experiments_dry_run_to_a_plan_or_one_line(sandboxed, tmp_path_factory, capsys):
    fuzz_files(WEIGHTED, 250, sandboxed, tmp_path_factory, capsys)


@pytest.mark.slow
def test_mutated_sweeps_dry_run_to_a_plan_or_one_line(sandboxed, tmp_path_factory, capsys):
    fuzz_files(DEAR, 60, sandboxed, tmp_path_factory, capsys)


@pytest.mark.parametrize("where", ["results", "home", "tmp", "cache", "data"])
def test_a_stray_write_is_caught(tmp_path, sandboxed, monkeypatch, where):
    """The check itself: a write the harness makes outside the results folder fails it (a
    planted write into each watched place, and into the results folder, which passes)."""
    folder = tmp_path / "exp"
    folder.mkdir()
    path = _write(folder, "smoke.yaml", TEXTS["smoke.yaml"])
    target = {"results": folder / "results" / "x", "home": Path.home() / ".stray",
              "tmp": Path(tempfile.gettempdir()) / "stray",
              "cache": Path(os.environ["XDG_CACHE_HOME"]) / "stray",
              "data": Path(os.environ["HARNESS_DATA"]) / "stray"}[where]
    print_plan = runner.print_plan

    def leaky(*args, **kwargs):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("stray")
        return print_plan(*args, **kwargs)

    monkeypatch.setattr(runner, "print_plan", leaky)
    before = files_under(folder, *sandboxed.values())
    assert dry_run(path, folder / "results")[0] == 0
    outside = written_outside(before, files_under(folder, *sandboxed.values()),
                              folder / "results", sandboxed["data"])
    assert outside == ([] if where == "results" else [target])
