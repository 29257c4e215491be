"""scripts/gpu_check.py, the prepared CUDA run: it refuses cleanly without CUDA, runs every code
path at quick size on a CPU without submitit, prdc, constriction or import-linter, and reports a
failure injected into each kind of section (a `harness run` that fails, precisions that
disagree, a training mode that raises, a wrong all-reduce, a global setting left changed, a NaN
figure, a section past its budget) as not ok, while the others go on. The figures themselves
come from a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
sys.path.insert(0, str(REPO / "scripts"))

from gpucheck import ar_steps, harness_runs, plan, record  # noqa: E402
from gpucheck.context import Context  # noqa: E402

# What the GPU machine's python lacks (import names).
ABSENT = ("submitit", "prdc", "constriction", "importlinter")

SITE = """\
import importlib.abc
import importlib.machinery
import sys

BLOCKED = {blocked!r}
PATCHES = {patches!r}


class _Hook(importlib.abc.MetaPathFinder):
    # Makes the blocked packages unimportable, and runs a patch in a module right after it loads.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)",
                                      name=name)
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module, load=load, code=PATCHES[name]):
            load(module)
            exec(code, module.__dict__)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Hook())
"""


def _site(folder: Path, patches: dict[str, str], blocked=ABSENT) -> dict[str, str]:
    """An environment whose every python process (the check, its sections, `harness run`,
    torchrun's ranks) loads a sitecustomize that blocks `blocked` and applies `patches`."""
    folder.mkdir(parents=True, exist_ok=True)
    code = {name: textwrap.dedent(text) for name, text in patches.items()}
    (folder / "sitecustomize.py").write_text(SITE.format(blocked=tuple(blocked), patches=code))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO)])
    env["OMP_NUM_THREADS"] = "1"  # a shared 2-core machine: one thread per process
    return env


def _run(*args: str, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env or {**os.environ, "PYTHONPATH": str(REPO)})


def _sections(out: Path) -> dict:
    return json.loads((out / "gpu_check.json").read_text())["sections"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_with_one_line_and_exit_2_without_cuda(tmp_path):
    done = _run("--out", str(tmp_path / "out"), timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "names"), [
    (("--only", "smoke,nonsense"), "nonsense"),
    (("--budget", "smoke=soon"), "smoke=soon"),
    (("--budget", "everything=5"), "everything")])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, names):
    done = _run("--out", str(tmp_path / "out"), "--allow-cpu", *args, timeout=120)
    assert done.returncode == 2 and names in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- the parts


def _record(status="ok", held=True, **extra) -> dict:
    return {"status": status, "checks": {"a": {"held": True, "detail": ""},
                                         "b": {"held": held, "detail": "b broke"}}, **extra}


def test_ok_needs_exit_0_a_finished_record_and_every_check():
    assert record.verdict(_record(), 0, False, 1.0, 9.0)["ok"]
    failed = record.verdict(_record(held=False), 0, False, 1.0, 9.0)
    assert failed["status"] == "failed" and "b: b broke" in failed["reason"]
    # A record that says ok beside a non-zero exit is not believed.
    assert record.verdict(_record(), 1, False, 1.0, 9.0)["status"] == "failed"
    assert record.verdict(None, 0, False, 1.0, 9.0)["status"] == "failed"
    assert record.verdict(_record(status="running"), 0, False, 1.0, 9.0)["status"] == "failed"
    timed = record.verdict(_record(status="running"), -15, True, 9.2, 9.0)
    assert timed["status"] == "timed_out" and not timed["ok"] and "budget of 9 s" in \
        timed["reason"]
    skipped = record.verdict(_record(status="skipped", reason="no GPU"), 0, False, 1.0, 9.0)
    assert skipped["status"] == "skipped" and not skipped["ok"] and skipped["reason"] == "no GPU"


def test_global_settings_are_seen_changed_and_put_back():
    before = record.settings()
    with record.restored():
        torch.backends.cuda.matmul.allow_tf32 = not before["cuda.matmul.allow_tf32"]
        torch.set_num_threads(before["num_threads"] + 1)
        changed = record.changed_settings(before, record.settings())
    # (matmul precision follows the TF32 flag: the same setting seen twice)
    assert {c.split(":")[0] for c in changed} == {"cuda.matmul.allow_tf32",
                                                  "float32_matmul_precision", "num_threads"}
    assert record.settings() == before


def test_a_sampler_stops_after_the_steps_asked_and_is_scaled():
    from models import registry

    family = registry.get("pixelcnn")
    torch.manual_seed(0)
    model = family.build_model(family.build_config("tiny")).eval()  # 8×8×3: 192 sub-pixels
    total = ar_steps.total_subpixels(model)
    for method in ("naive", "cached"):
        seconds, drawn = ar_steps.bounded_call_s(lambda m=method: model.sample(2, method=m), 5,
                                                 lambda: None)
        assert drawn == 5 and seconds > 0
        scaled = ar_steps.timed_rate(lambda m=method: model.sample(2, method=m), 2, 24, total,
                                     lambda: None)
        assert scaled.timed_steps == (24, 48) and scaled.total_steps == total == 192
        assert scaled.call_s == pytest.approx(scaled.setup_s + 192 * scaled.step_s)
    assert model.sample(2, method="naive").shape == (2, 3, 8, 8)  # the limiter is gone


def test_estimates_are_the_slower_of_arithmetic_and_launches():
    costs = {"vdvae_forward:fmnist_tiny": {"flops": 1e6, "ops": 100.0},
             "vdvae_forward:cifar10_tiny": {"flops": 1e12, "ops": 10.0},
             "vdvae_sample:cifar10_tiny": {"flops": 1e6, "ops": 10.0},
             "pixelcnn_forward:tiny@32": {"flops": 1e6, "ops": 10.0},
             "pixelcnn_cached_row:tiny@32": {"flops": 1e3, "ops": 1000.0}}
    rates = plan.Rates(fp32_flop_per_s=1e12, tf32_flop_per_s=1e12, bf16_flop_per_s=2e12,
                       op_s=1e-3, process_s=1.0, smoke_s=5.0, compile_s=7.0, basis="test")
    found = plan.estimate(plan.QUICK, costs, rates, "cpu", 0)
    assert set(plan.SECTIONS) - set(found) == {"tf32", "multi_gpu", "train_compiled"}
    # bf16_vs_fp32: three trainings of 6 steps, bound by launches (3 × 100 ops × 1 ms).
    assert found["bf16_vs_fp32"].seconds == pytest.approx(1.0 + 3 * 6 * 0.3)
    # train: 3 × 1e12 FLOPs × batch 4 per step, 3 steps, fp32 twice and bf16 once.
    assert found["train_images_per_s"].seconds == pytest.approx(1.0 + 3 * 12 * (1 + 1 + 0.5))
    on_gpus = plan.estimate(plan.QUICK, costs, rates, "cuda", 2)
    assert set(on_gpus) == set(plan.SECTIONS) and on_gpus["train_compiled"].seconds > 7.0
    budget = plan.budgets(found, 30.0, {"smoke": 4.0})
    assert budget["smoke"] == 4.0 and budget["peak"] == 30.0
    assert budget["train_images_per_s"] == pytest.approx(3 * found["train_images_per_s"].seconds)


@pytest.mark.slow
def test_the_full_run_is_estimated_under_five_minutes_on_an_h100():
    """The default sizes, counted on the meta device (no arithmetic; the same counts as on a
    real device to a few operations), at the assumed H100-class rates."""
    start = time.perf_counter()
    costs = plan.count_costs(plan.FULL, "meta")
    counting_s = time.perf_counter() - start
    found = plan.estimate(plan.FULL, costs, plan.H100_CLASS, "cuda", 1)
    assert "multi_gpu" not in found  # skipped on one GPU
    # The counting itself runs first, in its own child: allow its start and 15 s.
    assert sum(e.seconds for e in found.values()) + plan.H100_CLASS.process_s + 15 <= 300, \
        (found, counting_s)
    # Naive 64×64×3 sampling is timed over 37 sub-pixel steps, not its 12,288.
    forward = costs["pixelcnn_forward:cifar10@64"]["flops"]
    assert forward * 16 * 12288 > 3e16  # the whole call: ~36 PFLOP at batch 16


@pytest.mark.slow
def test_multi_gpu_section_on_two_pretended_gpus(tmp_path, monkeypatch):
    """Two "GPUs" (device_count patched; CUDA off, so ranks use gloo): one cell on both under
    torchrun, two cells each in its own process; each child records the CUDA_VISIBLE_DEVICES it
    saw. Then the placement check fails when two cells saw the same device."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    context = Context(out=tmp_path, device="cpu", quick=True, gpus=2, sizes=plan.QUICK)
    found = record.Record(tmp_path / "multi_gpu.json", "multi_gpu")
    harness_runs.multi_gpu(found, context)
    assert found.checks_held, found.data["checks"]
    assert found.data["cuda_visible_devices_per_cell"] == {"vdvae_g01_s0": "1",
                                                           "vdvae_g05_s0": "0"}
    apart = tmp_path / "multi_gpu" / "apart" / "results"
    for cell in harness_runs.APART_CELLS:
        path = apart / "cells" / cell / "provenance.json"
        saved = json.loads(path.read_text())
        saved["machine"]["cuda_visible_devices"] = "0"
        path.write_text(json.dumps(saved))
    again = record.Record(tmp_path / "again.json", "multi_gpu")
    harness_runs.check_placement(again, tmp_path / "multi_gpu" / "pair" / "results", apart)
    assert not again.data["checks"]["one_gpu_per_cell_placement"]["held"]


# --------------------------------------------------------------------------- whole runs


def test_the_blocked_packages_are_unimportable(tmp_path):
    env = _site(tmp_path / "site", {})
    done = subprocess.run([sys.executable, "-c", "import submitit"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "blocked by the test" in done.stderr


FIRST_FAULTS = {
    # `harness run` exits 1: a cell fails (the issue's `{'ok': True, 'returncode': 1}`).
    "harness.run.cell": """
        def _injected(*args, **kwargs):
            raise RuntimeError("injected codec failure")
        KINDS["codec"] = _injected
        """,
    "gpucheck.group": """
        def all_reduce_total(rank, device):
            return -1.0
        """,
    "gpucheck.speed": """
        _measured = sample_images_per_s
        def sample_images_per_s(record, context):
            _measured(record, context)
            torch.backends.cuda.matmul.allow_tf32 = not torch.backends.cuda.matmul.allow_tf32
        """,
}

SECOND_FAULTS = {
    "gpucheck.precision": """
        _rate = _matmul_rate
        def _matmul_rate(dtype, tf32, context, calls):
            return float("nan") if dtype == torch.bfloat16 else _rate(dtype, tf32, context, calls)
        _trained = trained_bits_per_dim
        def trained_bits_per_dim(preset, context, seed, **fields):
            return _trained(preset, context, seed, **fields) + (1.0 if fields else 0.0)
        """,
    "gpucheck.speed": """
        _step = step_images_per_s
        def step_images_per_s(preset, context, *, channels_last, bf16, compiled=False):
            if channels_last and not bf16:
                raise RuntimeError("injected channels_last failure")
            return _step(preset, context, channels_last=channels_last, bf16=bf16,
                         compiled=compiled)
        """,
}


@pytest.mark.slow
def test_quick_cpu_run_without_the_missing_packages_reports_each_fault(tmp_path):
    """Every section at quick size, with submitit, prdc, constriction and import-linter
    unimportable; faults in `smoke`, `distributed` and `sample_images_per_s` are reported, the
    other sections are ok, and the CUDA-only ones are skipped, never ok."""
    out = tmp_path / "out"
    done = _run("--out", str(out), "--quick", "--allow-cpu", timeout=1500,
                env=_site(tmp_path / "site", FIRST_FAULTS))
    sections = _sections(out)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "NOT OK: smoke, distributed, sample_images_per_s" in summary, done.stdout[-3000:]
    assert "estimate" in done.stdout.splitlines()[0]  # printed before any section ran
    for name in ("peak", "bf16_vs_fp32", "train_images_per_s"):
        assert sections[name]["status"] == "ok" and sections[name]["ok"], sections[name]
    for name in ("tf32", "multi_gpu", "train_compiled"):
        assert sections[name]["status"] == "skipped" and not sections[name]["ok"]
        assert sections[name]["reason"]
    smoke = sections["smoke"]
    assert not smoke["ok"] and not smoke["checks"]["harness_exit_status"]["held"]
    assert "exited 1" in smoke["reason"] and not smoke["checks"]["every_cell_done"]["held"]
    group = sections["distributed"]
    assert not group["checks"]["all_reduce"]["held"] and group["checks"]["backend"]["held"]
    assert group["checks"]["ddp_matches_one_process"]["held"]
    sampling = sections["sample_images_per_s"]
    assert "cuda.matmul.allow_tf32" in sampling["checks"]["global_settings_restored"]["detail"]
    assert sampling["figures"]["32x32x3_pixelcnn_naive_images_per_s"]["scaled"] is True
    # Figures carry units and what they compared; training against this run's bf16 peak.
    train = sections["train_images_per_s"]["figures"]
    fraction = train["cifar10_tiny_bf16_channels_last_fraction_of_bf16_peak"]
    assert fraction["unit"] == "fraction" and fraction["value"] > 0 and "peak" in \
        fraction["compared"]
    assert all(f["unit"] and f["compared"] for s in sections.values()
               for f in s.get("figures", {}).values())
    estimate = json.loads((out / "gpu_check.json").read_text())["estimate"]
    skipped = {"tf32", "multi_gpu", "train_compiled"}  # recorded skipped, never started
    assert set(estimate["sections"]) == set(plan.SECTIONS) - skipped and estimate["total_s"] > 0
    assert all("wall_s" not in sections[name] for name in skipped)


@pytest.mark.slow
def test_quick_cpu_run_reports_other_faults_and_a_section_past_its_budget(tmp_path):
    """A NaN peak, precisions that disagree, one training mode raising, and a section stopped
    past its budget: each not ok, with the others ok and still measured."""
    out = tmp_path / "out"
    done = _run("--out", str(out), "--quick", "--allow-cpu", "--budget",
                "sample_images_per_s=2", "--only",
                "peak,smoke,bf16_vs_fp32,distributed,train_images_per_s,sample_images_per_s",
                timeout=1500, env=_site(tmp_path / "site", SECOND_FAULTS))
    sections = _sections(out)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("NOT OK: peak, bf16_vs_fp32, train_images_per_s, sample_images_per_s"
            in done.stdout.strip().splitlines()[-1]), done.stdout[-3000:]
    assert sections["smoke"]["ok"] and sections["distributed"]["ok"]
    # Without prdc the smoke run leaves the sample-quality study out, and says so.
    assert any("quality_samples=0" in note and "prdc" in note
               for note in sections["smoke"]["notes"])
    assert not sections["peak"]["checks"]["bf16_matmul_tflop_per_s_finite"]["held"]
    assert not sections["bf16_vs_fp32"]["checks"]["agrees_with_fp32"]["held"]
    train = sections["train_images_per_s"]
    assert not train["checks"]["cifar10_tiny_fp32_channels_last_runs"]["held"]
    assert "injected channels_last failure" in train["reason"]
    assert train["figures"]["cifar10_tiny_fp32_nchw_images_per_s"]["value"] > 0
    assert train["figures"]["cifar10_tiny_bf16_channels_last_images_per_s"]["value"] > 0
    timed = sections["sample_images_per_s"]
    assert timed["status"] == "timed_out" and timed["budget_s"] == 2.0
    assert timed["wall_s"] < 2.0 + 20  # stopped: SIGTERM, at worst SIGKILL after the grace
