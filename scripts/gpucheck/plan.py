"""The check's sizes, and its time estimate from FLOP and operation counts, made before any
section runs.

`count_costs` (in the `plan` child, on the device the check runs on) counts each model's FLOPs
(torch.utils.flop_counter) and ATen operations per forward pass, per sampling call and per row
of cached sampling at batch 1. `estimate` turns them into seconds per section: each piece of
work takes the longer of FLOPs / rate at its precision and operations × the cost of one eager
operation (small models on a GPU are bound by launches, not arithmetic), plus each child's
start. On CUDA the rates are assumed for an H100-class GPU (`H100_CLASS`); on a CPU they come
from a matmul timed in the plan child. A training step is counted as three forward passes.
Budgets: `BUDGET_FACTOR` × the estimate, at least a floor, and never past the run's total.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

SECTIONS = ("peak", "smoke", "bf16_vs_fp32", "tf32", "distributed", "multi_gpu",
            "train_images_per_s", "sample_images_per_s", "train_compiled")
BUDGET_FACTOR = 3.0


def skip_reason(name: str, device: str, gpus: int) -> str | None:
    """Why section `name` has no meaning on this machine, or None: the parent records the skip
    without starting it, and the section itself refuses the same way."""
    if name == "tf32" and device != "cuda":
        return ("TF32 is a CUDA tensor-core mode: on a CPU the flag changes nothing, so the "
                "comparison could not fail")
    if name == "train_compiled" and device != "cuda":
        return ("measures torch.compile's CUDA (Triton) kernels; the CPU backend is another "
                "compiler and takes minutes here")
    if name == "multi_gpu" and gpus < 2:
        return (f"needs two GPUs; {gpus} visible (the local launcher's multi-GPU paths stay "
                "unmeasured)")
    return None


@dataclass(frozen=True)
class Sizes:
    matmul_size: int                 # n of the n×n×n matmuls timed for the peak
    precision_preset: str            # VDVAE trained in fp32, bf16 and TF32
    precision_steps: int
    precision_batch: int
    precision_eval_images: int
    train_presets: tuple[str, ...]   # VDVAE presets timed for training images/s
    train_batch: int
    train_steps: int                 # timed steps per mode (after `train_warmup`)
    train_warmup: int
    compile_preset: str
    # image size -> (VDVAE preset of that size, PixelCNN preset resized to it)
    sample_sizes: tuple[tuple[int, str, str], ...]
    sample_batch: int
    naive_steps: int                 # sub-pixel steps timed (and twice that) per naive call
    cached_rows: int                 # image rows timed (and twice that) per cached call
    vdvae_sample_calls: int


FULL = Sizes(matmul_size=8192, precision_preset="fmnist_400k", precision_steps=80,
             precision_batch=32, precision_eval_images=512,
             train_presets=("cifar10", "imagenet32"), train_batch=16, train_steps=8,
             train_warmup=2, compile_preset="cifar10",
             sample_sizes=((32, "cifar10", "cifar10"), (64, "imagenet64", "cifar10")),
             sample_batch=16, naive_steps=12, cached_rows=1, vdvae_sample_calls=3)
QUICK = Sizes(matmul_size=256, precision_preset="fmnist_tiny", precision_steps=6,
              precision_batch=8, precision_eval_images=64, train_presets=("cifar10_tiny",),
              train_batch=4, train_steps=2, train_warmup=1, compile_preset="cifar10_tiny",
              sample_sizes=((32, "cifar10_tiny", "tiny"),), sample_batch=2, naive_steps=3,
              cached_rows=1, vdvae_sample_calls=2)


@dataclass(frozen=True)
class Rates:
    """Sustained rates assumed (CUDA) or measured (CPU) for the estimate."""

    fp32_flop_per_s: float
    tf32_flop_per_s: float
    bf16_flop_per_s: float
    op_s: float          # one eager ATen operation: launch and Python dispatch
    process_s: float     # a section's child: Python, torch and the device starting
    smoke_s: float       # the smoke experiment: tiny models, its time is fixed costs
    compile_s: float     # torch.compile of one VDVAE training step
    basis: str

    def flop_per_s(self, precision: str) -> float:
        return {"fp32": self.fp32_flop_per_s, "tf32": self.tf32_flop_per_s,
                "bf16": self.bf16_flop_per_s}[precision]


# Assumed, not measured (no GPU has run this check yet): H100 SXM dense peaks are 67 (fp32),
# 495 (tf32) and 990 (bf16) TFLOP/s; these are the fractions eager convolutions of these
# models might sustain. gpu_check.json records each section's estimate beside its wall time.
H100_CLASS = Rates(fp32_flop_per_s=25e12, tf32_flop_per_s=100e12, bf16_flop_per_s=200e12,
                   op_s=20e-6, process_s=10.0, smoke_s=45.0, compile_s=90.0,
                   basis="assumed H100-class rates: fp32 25, tf32 100, bf16 200 TFLOP/s "
                         "sustained, 20 us per eager operation, 10 s per section's start, "
                         "45 s for the smoke experiment, 90 s to compile")


def cpu_rates(matmul_flop_per_s: float) -> Rates:
    return Rates(fp32_flop_per_s=matmul_flop_per_s * 0.5, tf32_flop_per_s=matmul_flop_per_s * 0.5,
                 bf16_flop_per_s=matmul_flop_per_s * 0.25, op_s=50e-6, process_s=8.0,
                 smoke_s=90.0, compile_s=600.0,
                 basis=f"this CPU: an fp32 matmul ran at {matmul_flop_per_s / 1e9:.1f} GFLOP/s; "
                       "models assumed at half of it (bf16 a quarter), 50 us per operation")


# --------------------------------------------------------------------------- counting


def count_costs(sizes: Sizes, device: str) -> dict[str, dict[str, float]]:
    """{key: {"flops": per image, "ops": per call}} for every model the sections run, counted
    on `device` at batch 1 (operations do not grow with the batch; FLOPs do, linearly)."""
    from models import registry

    vdvae, pixelcnn = registry.get("vdvae"), registry.get("pixelcnn")
    costs: dict[str, dict[str, float]] = {}

    def vdvae_model(preset: str):
        config = vdvae.build_config(preset)
        with torch.device(device):
            return vdvae.build_model(config), vdvae.image_shape(config)

    forward_presets = {sizes.precision_preset, sizes.compile_preset, *sizes.train_presets}
    for preset in sorted(forward_presets):
        model, shape = vdvae_model(preset)
        image = torch.zeros((1, *shape), dtype=torch.uint8, device=device)
        costs[f"vdvae_forward:{preset}"] = _counted(lambda: model.loss(image))
    for size, vdvae_preset, pixelcnn_preset in sizes.sample_sizes:
        model, _ = vdvae_model(vdvae_preset)
        costs[f"vdvae_sample:{vdvae_preset}"] = _counted(lambda: model.sample(1))
        config = dataclasses.replace(pixelcnn.build_config(pixelcnn_preset), image_size=size,
                                     image_channels=3)
        with torch.device(device):
            model = pixelcnn.build_model(config).eval()
        image = torch.zeros((1, 3, size, size), dtype=torch.uint8, device=device)
        key = f"{pixelcnn_preset}@{size}"
        costs[f"pixelcnn_forward:{key}"] = _counted(lambda: model.loss(image))
        costs[f"pixelcnn_cached_row:{key}"] = _cached_row(model, size)
    return costs


def _counted(fn, flops: bool = True) -> dict[str, float]:
    """FLOPs (when asked: the counter is slow) and ATen operations of `fn()`."""
    ops = _OpCounter()
    counter = FlopCounterMode(display=False) if flops else contextlib.nullcontext()
    with torch.no_grad(), counter, ops:
        fn()
    return {"flops": float(counter.get_total_flops()) if flops else 0.0,
            "ops": float(ops.count)}


def _cached_row(model, size: int) -> dict[str, float]:
    """Operations of one image row (3 × size sub-pixels) of cached sampling: the row's start
    and 4 pixels, and 4 pixels more, extrapolated to the row (a whole row is ~50,000
    operations at 64 wide: slow to count one by one)."""
    from gpucheck import ar_steps

    def first(subpixels: int):
        def run():
            with ar_steps.stop_after(subpixels):
                try:
                    model.sample(1, method="cached")
                except ar_steps.StepLimit:
                    pass
        return _counted(run, flops=False)["ops"]

    short, long = first(12), first(24)
    per_subpixel = (long - short) / 12
    return {"ops": short + (3 * size - 12) * per_subpixel}


class _OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def matmul_flop_per_s(device: str, size: int = 512, repeats: int = 5) -> float:
    """A quick float32 matmul rate: the CPU estimate's basis."""
    a = torch.randn(size, size, device=device)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return repeats * 2 * size ** 3 / max(time.perf_counter() - start, 1e-9)


# --------------------------------------------------------------------------- estimating


@dataclass(frozen=True)
class Estimate:
    seconds: float
    flops: float
    ops: float


def _work(flops: float, ops: float, precision: str, rates: Rates) -> Estimate:
    return Estimate(max(flops / rates.flop_per_s(precision), ops * rates.op_s), flops, ops)


def _sum(parts: list[Estimate], extra_s: float = 0.0) -> Estimate:
    return Estimate(sum(p.seconds for p in parts) + extra_s, sum(p.flops for p in parts),
                    sum(p.ops for p in parts))


def estimate(sizes: Sizes, costs: dict[str, dict[str, float]], rates: Rates, device: str,
             gpus: int, sections: tuple[str, ...] = SECTIONS) -> dict[str, Estimate]:
    """Seconds (and the FLOPs and operations behind them) of each section in `sections` that
    has a meaning on this machine (`skip_reason`)."""
    def train_steps(preset: str, batch: int, steps: int, precision: str) -> Estimate:
        forward = costs[f"vdvae_forward:{preset}"]
        return _work(3 * forward["flops"] * batch * steps, 3 * forward["ops"] * steps,
                     precision, rates)

    found: dict[str, Estimate] = {}
    n = sizes.matmul_size
    matmul = 2.0 * n ** 3
    peak = [_work(23 * matmul, 23, "bf16", rates), _work(13 * matmul, 13, "fp32", rates)]
    if device == "cuda":
        peak.append(_work(13 * matmul, 13, "tf32", rates))
    found["peak"] = _sum(peak)
    found["smoke"] = _sum([], rates.smoke_s)
    one_training = [train_steps(sizes.precision_preset, sizes.precision_batch,
                                sizes.precision_steps, p) for p in ("fp32", "bf16", "tf32")]
    found["bf16_vs_fp32"] = _sum([one_training[0], one_training[0], one_training[1]])
    tf32 = [one_training[2]] + ([] if "bf16_vs_fp32" in sections else one_training[:1] * 2)
    found["tf32"] = _sum(tf32)
    # torchrun, its ranks' start and the group: fixed costs (the ranks' models are tiny).
    found["distributed"] = _sum([], 10.0)
    # Two `harness run`s of one and two tiny cells: each about a third of the smoke run's six.
    found["multi_gpu"] = _sum([], 2 * rates.smoke_s / 3)
    modes = ("fp32", "fp32", "bf16")
    found["train_images_per_s"] = _sum([
        train_steps(preset, sizes.train_batch, sizes.train_warmup + sizes.train_steps, mode)
        for preset in sizes.train_presets for mode in modes])
    sampling = []
    batch = sizes.sample_batch
    for size, vdvae_preset, pixelcnn_preset in sizes.sample_sizes:
        sample = costs[f"vdvae_sample:{vdvae_preset}"]
        calls = 1 + sizes.vdvae_sample_calls
        sampling.append(_work(sample["flops"] * batch * calls, sample["ops"] * calls, "fp32",
                              rates))
        key = f"{pixelcnn_preset}@{size}"
        forward = costs[f"pixelcnn_forward:{key}"]
        naive_steps = 1 + 3 * sizes.naive_steps  # warm-up, then k and 2k steps
        sampling.append(_work(forward["flops"] * batch * naive_steps, forward["ops"] * naive_steps,
                              "fp32", rates))
        row = costs[f"pixelcnn_cached_row:{key}"]
        rows = 1 + 3 * sizes.cached_rows
        # A cached row computes each layer once per position of the row: a forward pass's
        # FLOPs over the rows.
        sampling.append(_work(forward["flops"] / size * batch * rows, row["ops"] * rows, "fp32",
                              rates))
    found["sample_images_per_s"] = _sum(sampling)
    # Compiled steps; eager ones too unless the training section times them in this run.
    eager = sizes.compile_preset in sizes.train_presets and "train_images_per_s" in sections
    compiled = train_steps(sizes.compile_preset, sizes.train_batch,
                           (1 if eager else 2) * (sizes.train_warmup + sizes.train_steps), "bf16")
    found["train_compiled"] = _sum([compiled], rates.compile_s)
    return {name: Estimate(value.seconds + rates.process_s, value.flops, value.ops)
            for name, value in found.items()
            if name in sections and skip_reason(name, device, gpus) is None}


def budgets(estimates: dict[str, Estimate], floor_s: float,
            overrides: dict[str, float]) -> dict[str, float]:
    """Each section's time limit: `BUDGET_FACTOR` × its estimate, at least `floor_s`, unless
    `overrides` names it."""
    return {name: overrides.get(name, max(floor_s, BUDGET_FACTOR * value.seconds))
            for name, value in estimates.items()}


def record(estimates: dict[str, Estimate], budget: dict[str, float]) -> dict[str, Any]:
    return {name: {"estimate_s": round(value.seconds, 1), "flops": value.flops,
                   "ops": value.ops, "budget_s": round(budget[name], 1)}
            for name, value in estimates.items()}
