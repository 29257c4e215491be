"""No silent minute: the plan's counts and probe show progress with an ETA (a tqdm bar on a
terminal, plain lines otherwise), each training line names its cell, and Ctrl-C during a dry run
does not claim saved work."""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from pathlib import Path

import pytest

from data_fixtures import write_idx_dataset
from harness.cli import main
from harness.engine import progress as engine_progress
from harness.run import progress, runner

EXPERIMENT = """\
name: talk
data: {{dataset: mnist, data_dir: {data}, options: {{validation_size: 8}}, test_images: 16}}
models:
  vdvae: {{family: vdvae, preset: fmnist_tiny, config: {{zdim: {zdim}}},
          sweep: {{grid: {{effective_depth: [1, 5]}}}}}}
train: {{batch_size: 8, max_steps: 2, log_every_steps: 1, progress: lines}}
eval: {{batch_size: 16, iw_k: 0, n_grid_samples: 0, sample_batch_size: 2, sample_repeats: 1,
       sample_warmup: 0, sample_max_rounds: 1, sample_window_rounds: 1}}
runner: {{jobs: 1, threads_per_job: 1, report: false, estimate: probe, probe_steps: 1}}
"""


@pytest.fixture
def experiment(tmp_path, request) -> Path:
    write_idx_dataset(tmp_path / "data" / "mnist", 40, 16)
    path = tmp_path / "talk.yaml"
    # A zdim no other test plans with: the plan's counts are cached per process.
    zdim = 5 + len(request.node.name) % 7
    path.write_text(EXPERIMENT.format(data=tmp_path / "data", zdim=zdim))
    return path


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def harness(*args: str, err: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), err if err is not None else io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_a_dry_run_says_what_its_counts_and_probe_do_with_an_eta(experiment):
    code, out, err = harness("run", str(experiment), "--dry-run")
    assert code == 0 and err == "", err  # stderr stays for errors
    lines = out.splitlines()
    plan_start = next(i for i, line in enumerate(lines) if line.startswith("talk: 2 cells"))
    before = lines[:plan_start]  # all of it printed before the plan
    assert before[0].startswith("plan: counting the FLOPs and training memory of ")
    counted = [line for line in before if re.match(r"plan: \d+/\d+ counted \(", line)]
    assert counted and counted[-1].endswith("so far; done")
    assert all("; ETA " in line for line in counted[:-1])
    assert any(line.startswith("probe: timing 1 model(s) for the estimate: 1 timed training "
                               "step(s), an inference pass and sampling calls each")
               for line in before)
    assert re.search(r"^probe: 1/1 timed \(vdvae_g01_s0, [\d,]+ parameters\), \d+s so far; "
                     r"done$", out, re.M), out


def test_on_a_terminal_the_progress_is_a_bar_on_stderr(experiment):
    code, out, err = harness("run", str(experiment), "--dry-run", err=Terminal())
    assert code == 0
    assert "probe: timing 1 model(s)" in err and "1/1" in err  # tqdm's bar
    assert not re.search(r"^probe: 1/1 timed", out, re.M)


def test_the_eta_follows_the_share_of_the_work_done(monkeypatch):
    clock = itertools.chain([100.0], itertools.repeat(130.0))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    phase = progress.PhaseProgress("probe", count=2, total=4.0, stream=out, bar=False)
    phase.advance("small", weight=1.0)  # a quarter of the work in 30 s: 90 s to go
    assert out.getvalue() == "probe: 1/2 done (small), 30s so far; ETA 1m30s\n"
    assert phase.eta_s() == pytest.approx(90.0)


def test_each_training_line_names_its_cell(experiment, tmp_path):
    code, out, err = harness("run", str(experiment), "--results", str(tmp_path / "r"),
                             "--set", "runner.estimate=flops",
                             "--set", "runner.flops_per_s=1e10")
    assert code == 0, err
    steps = [line for line in err.splitlines() if " | loss " in line]
    assert len(steps) == 4, err  # two cells, two logged steps each
    for cell in ("vdvae_g01_s0", "vdvae_g05_s0"):
        assert [line.split(" | ")[0] for line in steps if line.startswith(cell)] == \
            [f"{cell}: step 1", f"{cell}: step 2"]


def test_a_reporter_outside_a_cell_has_no_label(tmp_path, capsys):
    """The engine alone (a library call): lines as before, no name in front."""
    from harness.engine.config import TrainConfig

    reporter = engine_progress.Reporter(TrainConfig(progress="lines"), tmp_path / "log.jsonl",
                                        True, 2)
    reporter.message("hello")
    with engine_progress.labelled("cell_a"):
        engine_progress.Reporter(TrainConfig(progress="lines"), tmp_path / "log.jsonl",
                                 True, 2).message("hello")
    assert capsys.readouterr().err.splitlines() == ["hello", "cell_a: hello"]


@pytest.mark.parametrize("args, says", [
    (["--dry-run"], "harness: interrupted; nothing was written (a dry run)"),
    ([], "harness: interrupted; completed work is saved and a re-run resumes")])
def test_ctrl_c_says_what_it_leaves(experiment, tmp_path, monkeypatch, args, says):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "make_plan", interrupted)
    code, _, err = harness("run", str(experiment), "--results", str(tmp_path / "r"), *args)
    assert code == 130 and err.strip() == says, err


def test_ctrl_c_in_validate_says_nothing_was_written(experiment, monkeypatch):
    from harness.experiment import load

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(load, "load_document", interrupted)
    code, _, err = harness("validate", str(experiment))
    assert code == 130 and err.strip() == "harness: interrupted; nothing was written", err
