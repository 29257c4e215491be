"""Fuzzed experiment files: ≥ 500 mutations of the shipped experiments, each either a
valid plan or one line `harness: error: <file>:<line>: ...` with exit 2 — never a traceback, and
never a results folder (the loader refuses before anything is written)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main

from .fuzz_yaml import dump, mutate_text, mutate_tree

REPO = Path(__file__).resolve().parents[2]
# The loader takes ~0.05 s on smoke.yaml and up to ~0.9 s on the parameter-matched sweeps, so the
# cheap files carry most examples; every shipped file is fuzzed.
CHEAP = ["smoke.yaml", "sampling_speed.yaml"]
DEAR = ["depth_sweep.yaml", "depth_sweep_cifar10.yaml", "depth_sweep_imagenet32.yaml"]
TEXTS = {name: (REPO / "experiments" / name).read_text(encoding="utf-8") for name in CHEAP + DEAR}
TREES = {name: yaml.safe_load(text) for name, text in TEXTS.items()}
OUTCOMES: dict[str, int] = {}


def _validate(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["validate", str(path)])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def check_outcome(path: Path, what: str) -> None:
    code, out, err = _validate(path)
    assert code in (0, 2), (what, code, err)
    if code == 0:
        assert out.startswith(f"{path}: ok"), (what, out)
        OUTCOMES["valid"] = OUTCOMES.get("valid", 0) + 1
        return
    lines = err.splitlines()
    assert len(lines) == 1, (what, err)
    assert lines[0].startswith("harness: error: "), (what, err)
    assert "Traceback" not in err
    assert str(path) in lines[0], (what, err)  # names the file (and its line, where it has one)
    OUTCOMES["refused"] = OUTCOMES.get("refused", 0) + 1


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@fuzz(400)
@given(st.sampled_from(CHEAP), st.data())
def test_mutated_cheap_experiments_are_a_plan_or_one_line(tmp_path_factory, name, data):
    tree_or_text = data.draw(st.sampled_from(["tree", "tree", "tree2", "text"]))
    if tree_or_text == "text":
        text, what = mutate_text(TEXTS[name], data)
    else:
        doc, what = mutate_tree(TREES[name], data)
        if tree_or_text == "tree2":
            doc, second = mutate_tree(doc, data) if doc else (doc, "")
            what += "; " + second
        text = dump(doc)
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / name
    _write(path, text)
    check_outcome(path, f"{name}: {what}")
    assert sorted(p.name for p in folder.iterdir()) == [name]  # nothing else was written


@fuzz(120)
@given(st.sampled_from(DEAR), st.data())
def test_mutated_sweep_experiments_are_a_plan_or_one_line(tmp_path_factory, name, data):
    if data.draw(st.booleans()):
        text, what = mutate_text(TEXTS[name], data)
    else:
        doc, what = mutate_tree(TREES[name], data)
        text = dump(doc)
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / name
    _write(path, text)
    check_outcome(path, f"{name}: {what}")


def test_fuzz_refused_and_accepted_both_happen():
    """The fuzzer is not vacuous: it produced both outcomes (run after the two above)."""
    if not OUTCOMES:
        pytest.skip("run with the fuzz tests above")
    assert OUTCOMES.get("refused", 0) > 100 and OUTCOMES.get("valid", 0) > 10, OUTCOMES


def test_fuzz_figures_are_printed(capsys):
    """Print the counts docs/reliability.md quotes (run with -s)."""
    if OUTCOMES:
        with capsys.disabled():
            print(f"\nexperiment fuzz: {sum(OUTCOMES.values())} files, {OUTCOMES}")
