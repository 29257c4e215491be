"""Numbers that misbehave: NaN and inf injected into a batch's loss mid-run, a loss
that explodes after N steps, a skip threshold that skips every update. Each ends as
docs/training says — non-finite updates skipped and counted; a run of skips stopped with the
message — in a sweep and in one cell, and the other cells' results are those of a clean run."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from harness.atomic import read_jsonl
from harness.cli import main
from models import registry

from .smoke_sweep import CELLS, deterministic_view, write_sweep

POISONED = "vdvae_g05_s0"  # the effective-depth-5 cell
ONE_CELL = ["--set", "models.vdvae.sweep.grid.effective_depth=[5]", "--set", "codecs=[]"]


def poison(monkeypatch, at: dict[int, float], from_step: int | None = None) -> None:
    """Multiply the depth-5 VDVAE's training loss by `at[step]` (NaN, inf) at those steps, and
    by 1e6 from `from_step` on (an explosion); the depth-1 cell is left alone."""
    build = registry.Family.build_model

    def build_model(self, config):
        model = build(self, config)
        if self.name != "vdvae" or self.effective_depth(config) != 5:
            return model
        clean, calls = model.loss, [0]

        def loss(images, **kwargs):  # kwargs: posterior_means=True in the evaluation pass
            out = clean(images, **kwargs)
            if not model.training:
                return out
            calls[0] += 1
            factor = at.get(calls[0], 1.0)
            if from_step is not None and calls[0] >= from_step:
                factor = 1e6
            return {**out, "loss_nats_per_dim": out["loss_nats_per_dim"] * factor}

        model.loss = loss
        return model

    monkeypatch.setattr(registry.Family, "build_model", build_model)


def run(path, results, *extra) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["run", str(path), "--results", str(results), *extra])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean")
    path = write_sweep(folder, steps=8, every=4, report=False)
    assert run(path, folder / "r")[0] == 0
    return deterministic_view(folder / "r")


def _skips(results):
    return [(r["step"], r["reason"]) for r in read_jsonl(results / "cells" / POISONED /
                                                           "train_log.jsonl")
            if r["type"] == "skip"]


def _status(results, name=POISONED):
    return json.loads((results / "cells" / name / "status.json").read_text())


def _others_are_clean(results, clean):
    view = deterministic_view(results, tuple(c for c in CELLS if c != POISONED))
    for key, value in view.items():
        if key == "summary":
            rows = [r for r in value if r["cell"] != POISONED]
            assert rows == [r for r in clean["summary"] if r["cell"] != POISONED]
        else:
            assert value == clean[key], key


@pytest.mark.parametrize("where", ["sweep", "one cell"])
def test_nan_and_inf_batches_are_skipped_and_counted(tmp_path, monkeypatch, clean, where):
    path = write_sweep(tmp_path, steps=8, every=4, report=False)
    poison(monkeypatch, {3: float("nan"), 5: float("inf"), 6: float("-inf")})
    code, out = run(path, tmp_path / "r", *(ONE_CELL if where == "one cell" else []))
    assert code == 0, out
    status = _status(tmp_path / "r")
    assert status["status"] == "done" and status["steps"] == 8
    assert _skips(tmp_path / "r") == [(3, "nonfinite"), (5, "nonfinite"), (6, "nonfinite")]
    rows = read_jsonl(tmp_path / "r" / "cells" / POISONED / "metrics.jsonl")
    assert [r["value"] for r in rows if r["metric"] == "skipped_updates"] == [3]
    assert all(r["value"] == r["value"] for r in rows if r["metric"] == "test_bits_per_dim")
    if where == "sweep":
        _others_are_clean(tmp_path / "r", clean)


@pytest.mark.parametrize("where", ["sweep", "one cell"])
def test_an_exploding_loss_stops_the_cell_with_the_message(tmp_path, monkeypatch, clean, where):
    path = write_sweep(tmp_path, steps=8, every=4, report=False)
    poison(monkeypatch, {}, from_step=4)
    extra = ["--set", "train.max_consecutive_skips=3"]
    code, out = run(path, tmp_path / "r", *extra, *(ONE_CELL if where == "one cell" else []))
    assert code == 1, out
    status = _status(tmp_path / "r")
    assert status["status"] == "failed"
    assert status["error"].startswith("training stopped at step 6: the last 3 updates were all "
                                      "skipped because"), status["error"]
    assert "train.skip_threshold" in status["error"] and "\n" not in status["error"]
    assert _skips(tmp_path / "r") == [(4, "grad_norm"), (5, "grad_norm"), (6, "grad_norm")]
    assert f"failed: {POISONED}: training stopped at step 6" in out
    if where == "sweep":
        clean_run = {k: v for k, v in clean.items()}
        for name in ("vdvae_g01_s0", "codec_png"):
            assert _status(tmp_path / "r", name)["status"] == "done"
        view = deterministic_view(tmp_path / "r", ("vdvae_g01_s0", "codec_png"))
        assert {k: v for k, v in view.items() if k != "summary"} == {
            k: v for k, v in clean_run.items() if k in view and k != "summary"}


@pytest.mark.parametrize("where", ["sweep", "one cell"])
def test_a_threshold_that_skips_every_update_stops_with_the_message(tmp_path, clean, where):
    path = write_sweep(tmp_path, steps=8, every=4, report=False)
    extra = ["--set", "train.skip_threshold=1e-12", "--set", "train.max_consecutive_skips=4"]
    code, out = run(path, tmp_path / "r", *extra, *(ONE_CELL if where == "one cell" else []))
    assert code == 1, out
    cells = [POISONED] if where == "one cell" else ["vdvae_g01_s0", POISONED]
    for name in cells:
        status = _status(tmp_path / "r", name)
        assert status["status"] == "failed" and status["error"].startswith(
            "training stopped at step 4: the last 4 updates were all skipped"), status
        assert "raise train.skip_threshold" in status["error"]
        assert not (tmp_path / "r" / "cells" / name / "metrics.jsonl").exists()
    if where == "sweep":  # the codec row does not train: unaffected
        assert _status(tmp_path / "r", "codec_png")["status"] == "done"
        view = deterministic_view(tmp_path / "r", ("codec_png",))
        assert view["codec_png"] == clean["codec_png"]
