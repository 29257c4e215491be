"""Training throughput of the published CIFAR-10 VDVAE (39.1M parameters, 43 top-down blocks) on
CPU against the public reference implementation's graph (speed target 4, docs/benchmarks.md: at
least 1.5x the real reference's images/s, which is 1.75x against this copy of its graph, the copy
running ~15% slower than the real code): one step = forward, backward and an AdamW update at
batch 8, float32, 2 threads, ours
(`VDVAE.loss`, channels_last) and the reference's order of operations
(benchmarks/reference_graph.py: NCHW, GELU per bottleneck, concatenated posterior input) on the
same weights and posterior noise, timed alternately in one process.

`bash scripts/bench.sh -k vdvae` times a few rounds; the test suite (`--benchmark-disable`) runs
one step of each on the small cifar10_tiny preset. Reported in `extra_info`: images_per_s and
reference_images_per_s (from the median round), `speedup_vs_reference`, forward FLOPs per image
(torch.utils.flop_counter, counted on the meta device so it costs no compute), and the achieved
training GFLOP/s taking backward as twice the forward.

The same run also times a 4096² float32 matmul and oneDNN's GEMM with the same threads
(benchmarks/ceiling.py): the faster is the machine's dense float32 ceiling under the same load.
`ceiling_images_per_s` is the rate a step would reach if every FLOP ran at that speed, an upper
bound no float32 implementation of this architecture can pass on this machine;
`fraction_of_peak` is how close we are. The tighter bound is `convolution_floor_s`: our step's
convolutions, each shape timed alone with the same threads; `convolution_ceiling_speedup` is the
reference step over it, the most any change outside the convolution kernels could reach.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from ceiling import (convolution_floor, float32_peak,  # benchmarks/, beside this file
                     forward_flops_per_image)
from reference_graph import reference_loss_nats_per_dim
from test_bench_speed import target_line

from models.vdvae import PRESETS, VDVAE, VDVAEConfig

BATCH = 8
THREADS = 2
# Target 4 is 1.5x the real reference; the copy of its graph below runs ~15% slower than the real
# code (docs/benchmarks.md), so the copy is held to 1.75x.
TARGET_SPEEDUP_VS_REFERENCE = 1.75


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def test_reference_graph_computes_our_elbo():
    """The baseline does the same work: the reference's graph gives our loss for the same
    weights and noise (so the speed-up is not bought by computing something else)."""
    torch.manual_seed(0)
    config = VDVAEConfig(**PRESETS["cifar10_tiny"])
    ours = VDVAE(config)
    with torch.no_grad():  # non-zero everywhere, so that every path carries signal
        for parameter in ours.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    reference = VDVAE(config, channels_last=False)
    reference.load_state_dict(ours.state_dict())
    images = torch.randint(0, 256, (3, *ours.image_shape), dtype=torch.uint8)
    eps = [torch.randn(3, config.zdim, b.resolution, b.resolution)
           for b in ours.decoder.dec_blocks]
    expected = ours.loss(images, noise=eps)["loss_nats_per_dim"]
    got = reference_loss_nats_per_dim(reference, images, eps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bench_vdvae_cifar10_train_step(benchmark, two_threads):
    timed = not benchmark.disabled
    preset, rounds = ("cifar10", 3) if timed else ("cifar10_tiny", 1)
    config = VDVAEConfig(**PRESETS[preset])
    torch.manual_seed(0)
    model = VDVAE(config)
    reference = VDVAE(config, channels_last=False)
    reference.load_state_dict(model.state_dict())
    images = torch.randint(0, 256, (BATCH, *model.image_shape), dtype=torch.uint8)
    eps = [torch.randn(BATCH, config.zdim, b.resolution, b.resolution)
           for b in model.decoder.dec_blocks]
    losses = {
        "ours": lambda: model.loss(images, noise=eps)["loss_nats_per_dim"].mean(),
        "reference": lambda: reference_loss_nats_per_dim(reference, images, eps).mean()}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=2e-4, betas=(0.9, 0.9),
                                          weight_decay=0.01)
                  for name, m in (("ours", model), ("reference", reference))}
    wall_s: dict[str, list[float]] = {"ours": [], "reference": []}
    first_loss: dict[str, float] = {}

    def step(name: str) -> None:
        start = time.perf_counter()
        loss = losses[name]()
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        wall_s[name].append(time.perf_counter() - start)
        first_loss.setdefault(name, loss.item())

    def alternate():
        for name in ("ours", "reference"):  # warm-up: oneDNN primitives, allocator
            step(name)
        for _ in range(rounds):
            for name in ("ours", "reference"):
                step(name)

    benchmark.pedantic(alternate, rounds=1, iterations=1)
    assert first_loss["ours"] == pytest.approx(first_loss["reference"], rel=1e-5), first_loss
    step_s = {name: statistics.median(times[1:]) for name, times in wall_s.items()}
    flops = forward_flops_per_image("vdvae", config)
    train_gflops_per_s = 3 * flops * BATCH / step_s["ours"] / 1e9
    # ~5 s of matmuls; only worth it when the figures are shown (timed mode)
    peaks = float32_peak(THREADS) if timed else {"peak_gflops_per_s": float("nan")}
    peak_gflops_per_s = peaks["peak_gflops_per_s"]
    speedup = step_s["reference"] / step_s["ours"]
    convolutions = convolution_floor("vdvae", config, BATCH, THREADS)
    conv_ceiling = step_s["reference"] / convolutions["convolution_floor_s"]
    benchmark.extra_info.update({
        "preset": preset, "batch": BATCH, "threads": THREADS, "dtype": "float32",
        "rounds": rounds, "params": sum(p.numel() for p in model.parameters()),
        "images_per_s": BATCH / step_s["ours"],
        "reference_images_per_s": BATCH / step_s["reference"],
        "speedup_vs_reference": speedup, "target_speedup": TARGET_SPEEDUP_VS_REFERENCE,
        "target_met": speedup >= TARGET_SPEEDUP_VS_REFERENCE,
        "step_wall_s": step_s["ours"], "reference_step_wall_s": step_s["reference"],
        "forward_flops_per_image": flops,
        "train_gflops_per_s": train_gflops_per_s,
        **peaks,
        "fraction_of_peak": train_gflops_per_s / peak_gflops_per_s,
        "ceiling_images_per_s": peak_gflops_per_s * 1e9 / (3 * flops),
        **convolutions,
        "convolution_share_of_step": convolutions["convolution_floor_s"] / step_s["ours"],
        "convolution_ceiling_speedup": conv_ceiling,
        "targets": [target_line(
            f"4  {preset} training images/s vs the reference graph "
            f"({train_gflops_per_s / peak_gflops_per_s:.0%} of the float32 peak; its "
            f"convolutions alone, each timed in isolation, cap it at {conv_ceiling:.2f}x)",
            speedup, TARGET_SPEEDUP_VS_REFERENCE)],
    })
    assert flops > 0


# Training steps of a preset in a fresh process: its peak resident memory (a process's peak
# never goes down, so each setting needs its own process) and the median step time.
_STEP_SCRIPT = """
import json, statistics, sys, time
import torch
from models.vdvae import PRESETS, VDVAE, VDVAEConfig
preset, batch, threads, steps, checkpointing = sys.argv[1:6]
torch.set_num_threads(int(threads))
torch.manual_seed(0)
model = VDVAE(VDVAEConfig(**PRESETS[preset]))
model.use_activation_checkpointing(checkpointing == "1")
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
images = torch.randint(0, 256, (int(batch), *model.image_shape), dtype=torch.uint8)
times = []
for index in range(int(steps) + 1):  # the first step warms up and is not timed
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    model.loss(images)["loss_nats_per_dim"].mean().backward()
    optimizer.step()
    times.append(time.perf_counter() - start)
# VmHWM belongs to this process image: ru_maxrss would carry the forking parent's peak over exec
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_bytes": peak_kib * 1024, "step_s": statistics.median(times[1:])}))
"""


def _step_in_process(preset: str, batch: int, steps: int, checkpointing: bool) -> dict:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _STEP_SCRIPT, preset, str(batch), str(THREADS), str(steps),
         "1" if checkpointing else "0"], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(repo)}, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_vdvae_activation_checkpointing(benchmark):
    """Peak memory saved and time added by `train.activation_checkpointing` on the cifar10
    preset (batch 8, float32, 2 threads; each setting in its own process, run alternately).
    The untimed suite run uses the tiny preset, so CI stays lean."""
    timed = not benchmark.disabled
    preset, steps, rounds = ("cifar10", 2, 2) if timed else ("cifar10_tiny", 1, 1)
    runs: dict[bool, list[dict]] = {False: [], True: []}

    def measure():
        for _ in range(rounds):
            for checkpointing in (False, True):
                runs[checkpointing].append(_step_in_process(preset, BATCH, steps,
                                                            checkpointing))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    plain = {k: statistics.median(r[k] for r in runs[False]) for k in runs[False][0]}
    recomputed = {k: statistics.median(r[k] for r in runs[True]) for k in runs[True][0]}
    benchmark.extra_info.update({
        "preset": preset, "batch": BATCH, "threads": THREADS,
        "peak_rss_gib": plain["peak_rss_bytes"] / 2 ** 30,
        "peak_rss_gib_checkpointed": recomputed["peak_rss_bytes"] / 2 ** 30,
        "memory_saving_fraction": 1 - recomputed["peak_rss_bytes"] / plain["peak_rss_bytes"],
        "step_s": plain["step_s"], "step_s_checkpointed": recomputed["step_s"],
        "slowdown": recomputed["step_s"] / plain["step_s"],
        "targets": [f"target 5  {preset} activation checkpointing: peak "
                    f"{plain['peak_rss_bytes'] / 2 ** 30:.2f} -> "
                    f"{recomputed['peak_rss_bytes'] / 2 ** 30:.2f} GiB "
                    f"({1 - recomputed['peak_rss_bytes'] / plain['peak_rss_bytes']:.0%} less), "
                    f"{recomputed['step_s'] / plain['step_s']:.2f}x the step time"]})
    assert recomputed["step_s"] > 0 and plain["step_s"] > 0
    if timed:  # ~1 GiB saved on cifar10; on the tiny preset the few MiB saved are below the
        # process's RSS noise (seen both ways in CI), so the untimed run only runs the path. The
        # saving itself is asserted exactly in tests/test_vdvae.py (bytes kept for backward).
        assert recomputed["peak_rss_bytes"] < plain["peak_rss_bytes"]
