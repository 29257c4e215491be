"""Throughput sections: training images/s per precision and layout (`train_images_per_s`), the
same compiled (`train_compiled`), and sampling images/s of VDVAE against the Gated PixelCNN's
naive and cached samplers (`sample_images_per_s`).

Every figure says what it compared; rates of training come with the FLOP/s they imply (three
forward passes per image, counted by the plan) and that as a fraction of the bf16 matmul peak
measured by the `peak` section of the same run. A mode that fails is recorded as a failed check
and the other modes still run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from gpucheck import ar_steps, synthetic
from gpucheck.context import Context
from gpucheck.record import Record, restored
from models import registry

MODES = {"fp32_nchw": dict(channels_last=False, bf16=False),
         "fp32_channels_last": dict(channels_last=True, bf16=False),
         "bf16_channels_last": dict(channels_last=True, bf16=True)}


def step_images_per_s(preset: str, context: Context, *, channels_last: bool, bf16: bool,
                      compiled: bool = False) -> tuple[float, float]:
    """(median images/s of the timed training steps, seconds of the first step: compilation
    when `compiled`) of the VDVAE `preset` under AdamW, TF32 off as in the harness's training
    (call inside `record.restored()`)."""
    context.exact_float32()
    sizes = context.sizes
    family = registry.get("vdvae")
    config = family.build_config(preset)
    torch.manual_seed(0)
    with torch.device(context.device):
        model = family.model_cls(config, channels_last=channels_last).train()
    loss_of = torch.compile(model.loss) if compiled else model.loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # as the trainer
    images = synthetic.images(sizes.train_batch, family.image_shape(config), seed=3)
    images = images.to(context.device)
    times, loss = [], None
    for _ in range(sizes.train_warmup + sizes.train_steps):
        context.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(context.device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(images)["loss_nats_per_dim"].float().mean()
        loss.backward()
        optimizer.step()
        context.synchronize()
        times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss {float(loss)} is not finite")
    return sizes.train_batch / statistics.median(times[sizes.train_warmup:]), times[0]


def _flop_figures(record: Record, context: Context, name: str, preset: str,
                  images_per_s: float | None) -> None:
    per_image = context.train_flops_per_image(preset)
    if images_per_s is None or per_image is None:
        return
    rate = record.figure(f"{name}_tflop_per_s", images_per_s * per_image / 1e12, "TFLOP/s",
                         f"{name} images/s × {per_image / 1e9:.2f} GFLOP per training image "
                         "(three forward passes, counted by the plan)")
    peak = context.bf16_peak_flop_per_s()
    if rate is not None and peak:
        record.figure(f"{name}_fraction_of_bf16_peak", rate * 1e12 / peak, "fraction",
                      f"{name} TFLOP/s over the bf16 matmul peak of this run "
                      f"({peak / 1e12:.1f} TFLOP/s)")


def train_images_per_s(record: Record, context: Context) -> None:
    sizes = context.sizes
    for preset in sizes.train_presets:
        found: dict[str, float] = {}
        for mode, kwargs in MODES.items():
            name = f"{preset}_{mode}"
            try:
                with restored():
                    rate, _ = step_images_per_s(preset, context, **kwargs)
            except Exception as error:  # noqa: BLE001 - one mode failing must not hide others
                record.check(f"{name}_runs", False, f"{type(error).__name__}: {error}")
                continue
            record.check(f"{name}_runs", True, "trained with a finite loss")
            found[mode] = record.figure(
                f"{name}_images_per_s", rate, "images/s",
                f"training steps of VDVAE {preset}, batch {sizes.train_batch}, {mode} (TF32 "
                f"off): median of {sizes.train_steps} after {sizes.train_warmup} warm-up")
            _flop_figures(record, context, name, preset, found[mode])
        for numerator, denominator in (("fp32_channels_last", "fp32_nchw"),
                                       ("bf16_channels_last", "fp32_channels_last")):
            if found.get(numerator) and found.get(denominator):
                record.figure(f"{preset}_{numerator}_over_{denominator}",
                              found[numerator] / found[denominator], "ratio",
                              f"training images/s of {numerator} over {denominator}")


def train_compiled(record: Record, context: Context) -> None:
    context.refuse_if_meaningless("train_compiled")
    preset = context.sizes.compile_preset
    what = f"VDVAE {preset}, batch {context.sizes.train_batch}, bf16 channels_last"
    # The eager figure of this run's training section, else measured here.
    eager = context.figure("train_images_per_s", f"{preset}_bf16_channels_last_images_per_s")
    source = "from train_images_per_s"
    if eager is None:
        with restored():
            eager, _ = step_images_per_s(preset, context, channels_last=True, bf16=True)
        source = "measured here"
    with restored():
        compiled, first_s = step_images_per_s(preset, context, channels_last=True, bf16=True,
                                              compiled=True)
    record.figure("eager_images_per_s", eager, "images/s",
                  f"eager training steps, {what} ({source})")
    record.figure("compiled_images_per_s", compiled, "images/s",
                  f"torch.compile'd loss, {what}")
    record.figure("compile_s", first_s, "s", "the first compiled step: compilation included")
    record.figure("compiled_over_eager", compiled / eager, "ratio",
                  "compiled over eager training images/s, same model and batch")
    _flop_figures(record, context, "compiled", preset, compiled)
    record.check("compiled_runs", compiled > 0, f"{compiled:.1f} images/s")


# --------------------------------------------------------------------------- sampling


def _vdvae_images_per_s(model, batch: int, calls: int, context: Context) -> float:
    with torch.inference_mode():
        model.sample(batch)  # warm-up
        context.synchronize()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            model.sample(batch)
            context.synchronize()
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def sample_images_per_s(record: Record, context: Context) -> None:
    with restored():
        context.exact_float32()
        _sample_images_per_s(record, context)


def _sample_images_per_s(record: Record, context: Context) -> None:
    sizes = context.sizes
    batch = sizes.sample_batch
    vdvae, pixelcnn = registry.get("vdvae"), registry.get("pixelcnn")
    for size, vdvae_preset, pixelcnn_preset in sizes.sample_sizes:
        shape = f"{size}x{size}x3"
        torch.manual_seed(0)
        config = vdvae.build_config(vdvae_preset)
        assert vdvae.image_shape(config) == (3, size, size), (vdvae_preset, size)
        with torch.device(context.device):
            model = vdvae.build_model(config).eval()
        ancestral = record.figure(
            f"{shape}_vdvae_ancestral_images_per_s",
            _vdvae_images_per_s(model, batch, sizes.vdvae_sample_calls, context), "images/s",
            f"VDVAE {vdvae_preset} ancestral sampling, batch {batch}: median of "
            f"{sizes.vdvae_sample_calls} whole calls after one warm-up")
        del model
        config = dataclasses.replace(pixelcnn.build_config(pixelcnn_preset), image_size=size,
                                     image_channels=3)
        with torch.device(context.device):
            model = pixelcnn.build_model(config).eval()
        total = ar_steps.total_subpixels(model)
        rates = {}
        for method, steps in (("naive", sizes.naive_steps), ("cached", 3 * size
                                                             * sizes.cached_rows)):
            scaled = ar_steps.timed_rate(lambda m=method: model.sample(batch, method=m), batch,
                                         steps, total, context.synchronize,
                                         warmup_steps=1 if method == "naive" else 3 * size)
            rates[method] = record.figure(
                f"{shape}_pixelcnn_{method}_images_per_s", scaled.images_per_s, "images/s",
                f"Gated PixelCNN {pixelcnn_preset} at {shape}, {method} sampling, batch "
                f"{batch}: {scaled.timed_steps[0]} and {scaled.timed_steps[1]} of the "
                f"{total} sub-pixel steps timed, scaled to a whole call",
                timed_subpixel_steps=list(scaled.timed_steps), total_subpixel_steps=total,
                scaled=True, step_s=scaled.step_s, setup_s=scaled.setup_s,
                call_s=scaled.call_s)
        for method, rate in rates.items():
            if ancestral and rate:
                record.figure(f"{shape}_vdvae_over_pixelcnn_{method}", ancestral / rate,
                              "ratio", f"VDVAE ancestral over PixelCNN {method} images/s, "
                              f"batch {batch}, {shape}, same device")
        if rates.get("naive") and rates.get("cached"):
            record.figure(f"{shape}_pixelcnn_cached_over_naive",
                          rates["cached"] / rates["naive"], "ratio",
                          "PixelCNN cached over naive sampling images/s (both scaled)")
        record.check(f"{shape}_rates_positive",
                     all(v is not None and v > 0 for v in (ancestral, *rates.values())),
                     f"VDVAE {ancestral}, PixelCNN {rates} images/s")
