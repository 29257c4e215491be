"""One prepared run of the CUDA paths, with figures recorded as JSON (`scripts/gpu_check.sh`).

    python scripts/gpu_check.py --out DIR            # on a GPU machine: < 10 minutes on one H200
    python scripts/gpu_check.py --out DIR --quick --allow-cpu   # the same code paths, tiny, on CPU

Sections (each recorded in DIR/gpu_check.json as soon as it ends, so a run cut short keeps what it
measured; a failing section records its error and the others go on):

1. `smoke`: `harness run experiments/smoke.yaml` with `train.device=cuda`.
2. `bf16_vs_fp32`: the same VDVAE trained from the same seed in float32 and under bf16 autocast;
   test bits/dim (float32 evaluation) must agree within 0.01.
3. `tf32`: the same with TF32 matmuls/convolutions on, and the matmul rate with it off and on.
4. `torchrun_nccl`: the smoke experiment under `torchrun` on every visible GPU (NCCL).
5. `train_images_per_s`: the cifar10 and imagenet32 VDVAE presets, float32 NCHW, float32
   channels_last, bf16 channels_last, and bf16 compiled (`torch.compile`).
6. `sample_images_per_s`: VDVAE ancestral vs PixelCNN naive / cached, 32×32×3 and 64×64×3,
   batch 16.

Without CUDA it refuses with one line and exit status 2, unless `--allow-cpu` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness import atomic
from harness.engine import throughput
from harness.engine.config import EvalConfig, TrainConfig
from harness.engine.evaluate import likelihood_pass
from harness.engine.train import train
from models import registry
from models.likelihoods import nats_to_bits

REPO = Path(__file__).resolve().parents[1]
AGREEMENT_BITS_PER_DIM = 0.01


def _record(out: Path, results: dict, name: str, fn) -> None:
    start = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as error:  # noqa: BLE001 - one failing section must not lose the others
        results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    results[name]["wall_s"] = time.perf_counter() - start
    atomic.write_json(out / "gpu_check.json", results)
    print(f"gpu_check: {name}: {'ok' if results[name]['ok'] else results[name]['error']} "
          f"({results[name]['wall_s']:.0f} s)", flush=True)


def _harness(args: list[str], out: Path, launcher: list[str] | None = None) -> dict:
    command = (launcher or [sys.executable]) + ["-m", "harness", "run",
                                                str(REPO / "experiments" / "smoke.yaml"), *args]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return {"returncode": done.returncode, "run_wall_s": time.perf_counter() - start,
            "output_tail": (done.stdout + done.stderr)[-1500:], "command": " ".join(command)}


def _images(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Smooth-ish uint8 images (a low-resolution random field upsampled), the same everywhere:
    nothing needs to be downloaded onto the GPU machine."""
    generator = torch.Generator().manual_seed(seed)
    c, h, w = shape
    low = torch.rand(n, c, max(1, h // 4), max(1, w // 4), generator=generator)
    field = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear")
    noise = torch.rand(n, c, h, w, generator=generator) * 0.1
    return ((field * 0.9 + noise) * 255).clamp(0, 255).to(torch.uint8)


def _trained_bits_per_dim(preset: str, steps: int, device: str, out: Path, **train_fields) -> float:
    family = registry.get("vdvae")
    config = family.build_config(preset)
    shape = family.image_shape(config)
    torch.manual_seed(0)
    model = family.build_model(config)
    config_train = TrainConfig(batch_size=32, lr=1e-3, warmup_steps=min(100, steps // 3),
                               max_steps=steps, checkpoint_every_steps=0, progress="off",
                               device=device, seed=0, log_every_steps=max(1, steps), **train_fields)
    name = "_".join(f"{k}-{v}" for k, v in sorted(train_fields.items())) or "fp32"
    result = train(model, _images(2048, shape, seed=1), config_train, out / f"train_{name}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    with torch.inference_mode():
        arrays, _ = likelihood_pass(result.model.float(), _images(512, shape, seed=2).to(device),
                                    EvalConfig().batch_size_on(device), noise_seed=0)
    return float(nats_to_bits(arrays["loss_nats_per_dim"]).mean())


def _precision(preset: str, steps: int, device: str, out: Path, field: str) -> dict:
    reference = _trained_bits_per_dim(preset, steps, device, out)
    other = _trained_bits_per_dim(preset, steps, device, out, **{field: True})
    return {"preset": preset, "steps": steps, "fp32_bits_per_dim": reference,
            f"{field}_bits_per_dim": other, "difference_bits_per_dim": other - reference,
            "agree_within_0.01": abs(other - reference) < AGREEMENT_BITS_PER_DIM}


def _matmul_tflop_per_s(device: str, size: int) -> dict:
    rates = {}
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a @ b
        throughput.synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        throughput.synchronize(device)
        seconds = time.perf_counter() - start
        rates[f"tf32_{str(tf32).lower()}"] = 10 * 2 * size ** 3 / seconds / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    return {"matmul_size": size, "matmul_tflop_per_s": rates}


def _step_images_per_s(preset: str, batch: int, device: str, steps: int, *, channels_last: bool,
                       bf16: bool, compiled: bool) -> float:
    family = registry.get("vdvae")
    config = family.build_config(preset)
    torch.manual_seed(0)
    model = family.model_cls(config, channels_last=channels_last).to(device).train()
    loss_of = torch.compile(model.loss) if compiled else model.loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = _images(batch, family.image_shape(config), seed=3).to(device)
    times = []
    for index in range(steps + 3):  # three warm-up steps (compilation happens in the first)
        throughput.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(images)["loss_nats_per_dim"].float().mean()
        loss.backward()
        optimizer.step()
        throughput.synchronize(device)
        if index >= 3:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _training(presets: tuple[str, ...], batch: int, device: str, steps: int,
              compiled: bool) -> dict:
    modes = {"fp32_nchw": dict(channels_last=False, bf16=False, compiled=False),
             "fp32_channels_last": dict(channels_last=True, bf16=False, compiled=False),
             "bf16_channels_last": dict(channels_last=True, bf16=True, compiled=False)}
    if compiled:  # compiling takes minutes on a CPU: --quick leaves it out
        modes["bf16_compiled"] = dict(channels_last=True, bf16=True, compiled=True)
    found: dict = {"batch_size": batch}
    for preset in presets:
        found[preset] = {}
        for mode, kwargs in modes.items():
            try:
                found[preset][mode] = _step_images_per_s(preset, batch, device, steps, **kwargs)
            except Exception as error:  # noqa: BLE001 - e.g. a compile failure: record it
                found[preset][mode] = f"{type(error).__name__}: {error}"
    return found


def _median_images_per_s(model, batch: int, calls: int, warmup: int, **sample_kwargs) -> float:
    """The median images/s of `calls` single sampling calls after `warmup`: a fixed number of
    rounds (the 10-minute budget), not the runner's rounds-until-settled."""
    return throughput.sampling_speed(model, batch, repeats=1, warmup=warmup, window=calls,
                                     tolerance=float("inf"), max_rounds=calls,
                                     **sample_kwargs).images_per_s


def _sampling(sizes: dict[int, tuple[str, str]], batch: int, device: str) -> dict:
    found: dict = {"batch_size": batch}
    for size, (vdvae_preset, pixelcnn_preset) in sizes.items():
        row: dict = {}
        vdvae = registry.get("vdvae")
        torch.manual_seed(0)
        vdvae_config = vdvae.build_config(vdvae_preset)
        assert vdvae.image_shape(vdvae_config) == (3, size, size), (vdvae_preset, size)
        model = vdvae.build_model(vdvae_config).to(device).eval()
        row["vdvae_ancestral"] = _median_images_per_s(model, batch, calls=3, warmup=1)
        pixelcnn = registry.get("pixelcnn")
        config = dataclasses.replace(pixelcnn.build_config(pixelcnn_preset), image_size=size,
                                     image_channels=3)
        model = pixelcnn.build_model(config).to(device).eval()
        for sampler in pixelcnn.samplers:
            repeats = 1 if sampler.method == "naive" else 3
            row[f"pixelcnn_{sampler.method}"] = _median_images_per_s(
                model, batch, calls=repeats, warmup=1 if repeats > 1 else 0, **sampler.kwargs)
        row["vdvae_over_pixelcnn_cached"] = row["vdvae_ancestral"] / row["pixelcnn_cached"]
        found[f"{size}x{size}x3"] = row
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and run output")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU test of paths)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on "
              "a GPU machine, or pass --allow-cpu --quick to test its code paths",
              file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    results: dict = {"device": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus,
                     "torch": torch.__version__, "quick": args.quick}
    atomic.write_json(out / "gpu_check.json", results)
    quick = args.quick
    preset, steps = ("fmnist_tiny", 6) if quick else ("fmnist_400k", 300)
    _record(out, results, "smoke", lambda: _harness(
        ["--results", str(out / "smoke"), "--set", f"train.device={device}"], out))
    _record(out, results, "bf16_vs_fp32",
            lambda: _precision(preset, steps, device, out, "bf16_autocast"))
    _record(out, results, "tf32", lambda: {**_precision(preset, steps, device, out, "tf32"),
                                           **_matmul_tflop_per_s(device, 256 if quick else 8192)})
    nproc = max(1, gpus)
    _record(out, results, "torchrun_nccl", lambda: {"nproc_per_node": nproc, **_harness(
        ["--results", str(out / "torchrun"), "--set", f"train.device={device}", "--jobs", "1"],
        out, launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={nproc}"])})
    presets = ("cifar10_tiny",) if quick else ("cifar10", "imagenet32")
    _record(out, results, "train_images_per_s",
            lambda: _training(presets, 4 if quick else 16, device, 2 if quick else 10,
                              compiled=not quick))
    # image size -> (VDVAE preset of that size, PixelCNN preset resized to it)
    sizes = {32: ("cifar10_tiny", "tiny")} if quick else {32: ("cifar10", "cifar10"),
                                                          64: ("imagenet64", "cifar10")}
    _record(out, results, "sample_images_per_s", lambda: _sampling(sizes, 2 if quick else 16,
                                                                   device))
    failed = [name for name, value in results.items() if isinstance(value, dict)
              and not value.get("ok")]
    print(f"gpu_check: {out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}"
                                                    if failed else "; every section ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
