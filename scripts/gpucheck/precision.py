"""Sections about arithmetic: the matmul peak (`peak`), and training that must not depend on the
precision it ran in (`bf16_vs_fp32`, `tf32`).

A model trained from the same initial weights in float32 and under bf16 autocast (or with TF32
matmuls and convolutions) follows another trajectory from the first rounding on, much as it would
with another data order. So the precisions are held to the spread of the data order: the same
float32 training with a second data-order seed gives the scale, and the other precision must land
within `ORDER_SPREAD_FACTOR` times it (at least `FLOOR_BITS_PER_DIM`) of float32. Test bits/dim
is always taken in float32 with TF32 off, on the same images with the same posterior noise.
"""

from __future__ import annotations

import json
import math
import time

import torch

from gpucheck import synthetic
from gpucheck.context import Context
from gpucheck.record import Record, restored
from harness.engine.config import EvalConfig, TrainConfig
from harness.engine.evaluate import likelihood_pass
from harness.engine.train import train
from models import registry
from models.likelihoods import nats_to_bits

FLOOR_BITS_PER_DIM = 0.01
ORDER_SPREAD_FACTOR = 3.0
MATMUL_AGREEMENT = 2e-2  # relative max error of a bf16 matmul against float32


# --------------------------------------------------------------------------- peak


def _matmul_s(a: torch.Tensor, b: torch.Tensor, calls: int, context: Context) -> float:
    for _ in range(3):  # warm-up: the library picks its kernel
        a @ b
    context.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        a @ b
    context.synchronize()
    return (time.perf_counter() - start) / calls


def _matmul_rate(dtype: torch.dtype, tf32: bool, context: Context, calls: int) -> float:
    n = context.sizes.matmul_size
    generator = torch.Generator(device=context.device).manual_seed(0)
    a = torch.randn(n, n, device=context.device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=context.device, generator=generator).to(dtype)
    with restored():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        return 2.0 * n ** 3 / _matmul_s(a, b, calls, context)


def peak(record: Record, context: Context) -> None:
    n = context.sizes.matmul_size
    what = f"{n}×{n} @ {n}×{n} matmuls, mean over the timed calls after 3 warm-up"
    bf16 = record.figure("bf16_matmul_tflop_per_s", _matmul_rate(torch.bfloat16, False, context,
                                                                 20) / 1e12,
                         "TFLOP/s", f"bf16 {what}: the peak the other sections' fractions use")
    fp32 = record.figure("fp32_matmul_tflop_per_s", _matmul_rate(torch.float32, False, context,
                                                                 10) / 1e12,
                         "TFLOP/s", f"float32 {what}, TF32 off")
    if context.device == "cuda":
        tf32 = record.figure("tf32_matmul_tflop_per_s",
                             _matmul_rate(torch.float32, True, context, 10) / 1e12, "TFLOP/s",
                             f"float32 {what}, TF32 on")
        if tf32 and fp32:
            record.figure("tf32_over_fp32", tf32 / fp32, "ratio",
                          "TF32-on over TF32-off float32 matmul rate")
    else:
        record.note("TF32 is CUDA-only: no TF32 rate on a CPU")
    if bf16 and fp32:
        record.figure("bf16_over_fp32", bf16 / fp32, "ratio", "bf16 over float32 matmul rate")
    record.check("rates_positive", all(v is not None and v > 0 for v in (bf16, fp32)),
                 f"bf16 {bf16} and float32 {fp32} TFLOP/s")
    # The kernels must also compute the right thing: bf16 against float32 on the same inputs.
    generator = torch.Generator(device=context.device).manual_seed(1)
    a = torch.randn(256, 256, device=context.device, generator=generator)
    b = torch.randn(256, 256, device=context.device, generator=generator)
    with restored():
        torch.backends.cuda.matmul.allow_tf32 = False
        exact = a.double() @ b.double()
        error = float(((a.bfloat16() @ b.bfloat16()).double() - exact).abs().max()
                      / exact.abs().max())
    record.check("bf16_matmul_agrees", error < MATMUL_AGREEMENT,
                 f"max |bf16 - float64| / max |float64| = {error:.2e} (< {MATMUL_AGREEMENT})")


# --------------------------------------------------------------------------- precision


def trained_bits_per_dim(preset: str, context: Context, seed: int, **fields) -> float:
    """Test bits/dim (float32, TF32 off) of the VDVAE `preset` trained from weights seeded 0 with
    data order `seed` and TrainConfig `fields` (bf16_autocast, tf32)."""
    sizes = context.sizes
    family = registry.get("vdvae")
    config = family.build_config(preset)
    shape = family.image_shape(config)
    name = "_".join([f"seed{seed}", *sorted(k for k, v in fields.items() if v)]) or "fp32"
    with restored():  # the trainer sets TF32 globally and leaves it
        torch.manual_seed(0)
        model = family.build_model(config)
        steps = sizes.precision_steps
        train_config = TrainConfig(
            batch_size=sizes.precision_batch, lr=1e-3, warmup_steps=max(1, steps // 3),
            max_steps=steps, checkpoint_every_steps=0, progress="off", device=context.device,
            seed=seed, log_every_steps=steps, **fields)
        result = train(model, synthetic.images(16 * sizes.precision_batch, shape, seed=1),
                       train_config, context.folder("precision") / f"{preset}_{name}")
    with restored(), torch.inference_mode():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        test = synthetic.images(sizes.precision_eval_images, shape, seed=2)
        arrays, _ = likelihood_pass(result.model.float(), test,
                                    EvalConfig().batch_size_on(context.device), noise_seed=0)
    return float(nats_to_bits(arrays["loss_nats_per_dim"]).mean())


def _references(context: Context) -> dict[str, float]:
    """Float32 bits/dim at data-order seeds 0 and 1, trained once per run and kept in
    precision/fp32.json for the other precision section."""
    path = context.folder("precision") / "fp32.json"
    key = f"{context.sizes.precision_preset}/{context.sizes.precision_steps}"
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["bits_per_dim"]
    except (OSError, ValueError, KeyError):
        pass
    found = {f"seed{seed}": trained_bits_per_dim(context.sizes.precision_preset, context, seed)
             for seed in (0, 1)}
    path.write_text(json.dumps({"key": key, "bits_per_dim": found}))
    return found


def _agreement(record: Record, context: Context, field: str, label: str) -> None:
    sizes = context.sizes
    reference = _references(context)
    fp32 = record.figure("fp32_bits_per_dim", reference["seed0"], "bits/dim",
                         f"test bits/dim after {sizes.precision_steps} float32 steps of "
                         f"{sizes.precision_preset}, data order 0")
    order = record.figure("fp32_other_order_bits_per_dim", reference["seed1"], "bits/dim",
                          "the same with data order 1: the spread precision is held to")
    other = record.figure(f"{field}_bits_per_dim",
                          trained_bits_per_dim(sizes.precision_preset, context, 0,
                                               **{field: True}),
                          "bits/dim", f"the same training as fp32_bits_per_dim under {label}")
    if None in (fp32, order, other):
        record.check("agrees_with_fp32", False, "a training gave a non-finite bits/dim")
        return
    spread = abs(order - fp32)
    tolerance = max(FLOOR_BITS_PER_DIM, ORDER_SPREAD_FACTOR * spread)
    difference = record.figure("difference_bits_per_dim", other - fp32, "bits/dim",
                               f"{label} minus float32, same data order and initial weights")
    record.check("agrees_with_fp32", math.isfinite(difference) and abs(difference) <= tolerance,
                 f"|{label} - fp32| = {abs(difference):.4f} bits/dim, allowed "
                 f"{tolerance:.4f} (max of {FLOOR_BITS_PER_DIM} and {ORDER_SPREAD_FACTOR:g} × "
                 f"the data-order spread {spread:.4f})")


def bf16_vs_fp32(record: Record, context: Context) -> None:
    _agreement(record, context, "bf16_autocast", "bf16 autocast")


def tf32(record: Record, context: Context) -> None:
    context.refuse_if_meaningless("tf32")
    _agreement(record, context, "tf32", "TF32 matmuls and convolutions")
