"""Every read of a YAML node checks its type first: any section of any shipped experiment replaced
by a number, a string, a list or null, with smoke on or off, is valid or one line naming where —
never an AttributeError from a `.keys()` on an int."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "experiments").glob("*.yaml"))
REPLACEMENTS = [-1, "x", [1], None]


def validate(path: Path, *overrides: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["validate", str(path), *[w for o in overrides for w in ("--set", o)]])
    return code, err.getvalue()


def assert_valid_or_one_line(code: int, err: str, what: str) -> None:
    assert code in (0, 2), (what, err)
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("harness: error: "), (what, err)


@pytest.mark.parametrize("smoke", ["true", "false"])
@pytest.mark.parametrize("source", SHIPPED, ids=lambda p: p.stem)
def test_every_section_of_every_file_may_be_any_type(tmp_path, source, smoke):
    tree = yaml.safe_load(source.read_text(encoding="utf-8"))
    for section in tree:
        for value in REPLACEMENTS:
            path = tmp_path / f"{section}.yaml"
            path.write_text(yaml.safe_dump({**tree, section: value}, sort_keys=False))
            code, err = validate(path, f"smoke={smoke}")
            assert_valid_or_one_line(code, err, f"{source.name}: {section}: {value!r}")


def test_the_reported_case_is_one_line_naming_the_models_line(tmp_path):
    """depth_sweep.yaml with `models: -1`: its smoke overrides set keys under `models`."""
    tree = yaml.safe_load((REPO / "experiments" / "depth_sweep.yaml").read_text())
    path = tmp_path / "depth_sweep.yaml"
    path.write_text(yaml.safe_dump({**tree, "models": -1}, sort_keys=False))
    code, err = validate(path, "smoke=true")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot set 'models." in err and "'models' (" in err and "is -1 (int), not a section" \
        in err, err
    code, err = validate(path)
    assert code == 2 and "'models' must be a mapping of model names" in err, err


@pytest.mark.parametrize("override, says", [
    ("train.batch_size.x=1", "cannot set 'train.batch_size.x': 'train.batch_size'"),
    ("models.vdvae.sweep.grid.effective_depth.0.x=1", "is 1 (int), not a section"),
    ("smoke_overrides=5", None)])
def test_an_override_through_a_scalar_is_one_line(override, says):
    code, err = validate(REPO / "experiments" / "smoke.yaml", override, "smoke=true")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"harness: error: --set {override}: ") or says is None, err
    if says:
        assert says in err, err
