"""SIGTERM and Ctrl-C: a clean one-line stop, exit 143 / 130, the current cell's
checkpoints kept, and a re-run resumes from them to the same results as an uninterrupted run."""

from __future__ import annotations

import json
import signal

import pytest

from harness.atomic import read_jsonl

from .smoke_sweep import deterministic_view, start, wait_for, write_sweep

ONE_CELL = ("--set", "models.vdvae.sweep.grid.effective_depth=[5]", "--set", "codecs=[]")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_cleanly_and_a_rerun_resumes(tmp_path, sig, code):
    path = write_sweep(tmp_path, steps=40, every=5, report=False)
    results = tmp_path / "r"
    cell = results / "cells" / "vdvae_g05_s0"
    process = start(path, results, *ONE_CELL)
    wait_for(lambda: (cell / "checkpoints" / "step-10.pt").exists())
    process.send_signal(sig)  # to the runner only, as `kill` or a terminal's Ctrl-C would
    out = process.communicate(timeout=60)[0].decode()
    assert process.returncode == code, out
    stop = [line for line in out.splitlines() if line.startswith("harness:")]
    assert len(stop) == 1 and "interrupted" in stop[0] and "Traceback" not in out, out
    assert json.loads((cell / "status.json").read_text())["status"] == "running"
    kept = sorted(p.name for p in (cell / "checkpoints").glob("step-*.pt"))
    assert kept, "the interrupted cell lost its checkpoints"

    rerun = start(path, results, *ONE_CELL)
    assert rerun.wait(timeout=120) == 0, rerun.stdout.read().decode()
    status = json.loads((cell / "status.json").read_text())
    assert status["status"] == "done" and status["resumed_from_step"] >= 10
    steps = {r["step"] for r in read_jsonl(cell / "train_log.jsonl") if r["type"] == "train"}
    assert steps == set(range(1, 41))
    reference = tmp_path / "reference"
    assert start(path, reference, *ONE_CELL).wait(timeout=120) == 0
    cells = ("vdvae_g05_s0",)
    assert deterministic_view(results, cells) == deterministic_view(reference, cells)


# Regression: SIGTERM used to kill the runner outright (exit -15, no message, status left
# "running" only by luck); it now stops like Ctrl-C with exit 143. Covered by the SIGTERM case
# above; this checks the exit code in-process, without a training run.
def test_sigterm_during_a_command_is_exit_143_with_one_line(monkeypatch, capsys):
    import os

    from harness import cli

    def sends_itself_sigterm(args):
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    monkeypatch.setattr(cli, "_cmd_validate", sends_itself_sigterm)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), sends_itself_sigterm))
    assert cli.main(["validate", "x.yaml"]) == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted by SIGTERM" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored afterwards


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - test-only rewiring
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser
