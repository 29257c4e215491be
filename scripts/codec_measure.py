"""Measurements behind the lossless codecs' settings and the codec study's budget.

    python scripts/codec_measure.py bins CELL [--images N]
        bits-back rate by latent discretization, simulated as ideal code lengths (no coder): bins
        of width δ·σ_p around μ_p (the codec's) against bins of equal prior mass (HiLLoC's), at
        several resolutions; per scheme the net rate, its overhead over the model's negative
        ELBO on the same images, and the bits popped per image (the initial-bits cost)
    python scripts/codec_measure.py codec MODEL [MODEL ...] [--images N] [--batch-sizes 8,32]
        [--bin-widths 0.015625]
        the real codec on the first N test images: rates, initial bits, encode and decode
        images/s per wall second and per CPU second (one thread: CPU seconds hold on a shared
        machine)

MODEL / CELL: a results cell folder (cells/<cell>/), or WEIGHTS=PRESET_OR_YAML for a weights file.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.sources import load_images  # noqa: E402
from harness.engine import lossless  # noqa: E402
from harness.engine.lossless import bits_back  # noqa: E402
from harness.engine.lossless.rows import model_bits_per_dim  # noqa: E402
from harness.run.compress_command import load_model  # noqa: E402
from models.likelihoods import dmol_nats_per_dim, nats_to_bits, uint8_to_dmol_target  # noqa: E402

LN2 = math.log(2.0)


def _mass(lo: torch.Tensor, hi: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
    """Gaussian mass on [lo, hi] (float64), accurate in either tail."""
    a, b = (lo - mean) / std, (hi - mean) / std
    ndtr = torch.special.ndtr
    return torch.where(a > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a)).clamp(min=1e-300)


def simulate(model, images: torch.Tensor, scheme: str, resolution: float, seed: int = 0):
    """(net bits per image, bits popped per image) of bits-back coding with ideal code lengths:
    z ~ q, its bin, -log Q(bin) popped, -log P(bin) and -log p(x | bin centre) pushed."""
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    net = torch.zeros(n, dtype=torch.float64)
    popped = torch.zeros(n, dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64),
                                        torch.tensor(1.0, dtype=torch.float64))

    def choose(j, posterior, prior):
        nonlocal net, popped
        qm, qs = posterior[0].double(), posterior[1].double().exp()
        pm, ps = prior[0].double(), prior[1].double().exp()
        z = qm + qs * torch.randn(qm.shape, generator=generator, dtype=torch.float64)
        if scheme == "uniform":  # bins of width δσ_p centred on μ_p
            k = torch.round((z - pm) / (resolution * ps))
            lo, hi = pm + ps * resolution * (k - 0.5), pm + ps * resolution * (k + 0.5)
            centre = pm + ps * resolution * k
            log_p = torch.log(_mass(lo, hi, pm, ps))
        else:  # B = resolution bins of equal prior mass
            bins = resolution
            u = normal.cdf((z - pm) / ps)
            k = torch.clamp(torch.floor(u * bins), 0, bins - 1)
            edge = lambda t: pm + ps * normal.icdf(t.clamp(1e-300, 1 - 1e-16))  # noqa: E731
            lo = torch.where(k == 0, torch.full_like(z, -math.inf), edge(k / bins))
            hi = torch.where(k == bins - 1, torch.full_like(z, math.inf), edge((k + 1) / bins))
            centre = edge((k + 0.5) / bins)
            log_p = torch.full_like(z, -math.log(bins))
        log_q = torch.log(_mass(lo, hi, qm, qs))
        net += ((log_q - log_p) / LN2).sum(dim=(1, 2, 3))
        popped += (-log_q / LN2).sum(dim=(1, 2, 3))
        return centre.to(prior[0].dtype)

    with torch.no_grad():
        activations = model.encoder(model._network_input(images))
        params = model.decoder(n, activations, choose, model.config.n_top_down)
        nll = dmol_nats_per_dim(uint8_to_dmol_target(images), params) * images[0].numel()
    return net + nats_to_bits(nll.double()), popped


def test_images(n: int) -> torch.Tensor:
    return torch.from_numpy(load_images(f"fashion_mnist:test:{n}").images.copy())


def _model(spec: str):
    path, _, preset = spec.partition("=")
    return load_model(path, preset or None)


def cmd_bins(args) -> None:
    loaded = _model(args.cell)
    model = loaded.model.eval()
    torch.set_num_threads(1)
    images = test_images(args.images)
    dims = images[0].numel()
    bound = model_bits_per_dim(model, images, 32)
    print(f"{loaded.description}: negative ELBO {bound:.4f} bits/dim on {len(images)} test images")
    print("scheme       resolution   bits/dim  overhead%  popped bits/image")
    settings = [("uniform", 1 / w) for w in (1, 2, 4, 16, 64)] + \
               [("equal_mass", b) for b in (2 ** 4, 2 ** 6, 2 ** 8, 2 ** 10)]
    for scheme, resolution in settings:
        nets, pops = [], []
        for first in range(0, len(images), 32):
            net, popped = simulate(model, images[first:first + 32], scheme, resolution)
            nets.append(net)
            pops.append(popped)
        rate = float(torch.cat(nets).mean()) / dims
        label = (f"δ=1/{round(1 / resolution)}" if scheme == "uniform"
                 else f"B=2^{int(math.log2(resolution))}")
        print(f"{scheme:12s} {label:11s} {rate:9.4f} {100 * (rate - bound) / bound:+9.2f}"
              f"  {float(torch.cat(pops).mean()):,.0f}", flush=True)


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process): coding runs on one thread, so CPU
    seconds stay meaningful on a machine shared with other work, where wall seconds do not."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def cmd_codec(args) -> None:
    images = test_images(args.images)
    n, dims = len(images), images.numel()
    names = [str(i) for i in range(n)]
    for spec in args.models:
        loaded = _model(spec)
        bound = model_bits_per_dim(loaded.model, images, 32)
        for batch_size in args.batch_sizes:
            settings = ([(None, None)] if loaded.family.autoregressive else
                        [(w, r) for w in args.bin_widths for r in args.range_stds])
            for width, range_stds in settings:
                options = {} if width is None else {"bin_width": width, "range_stds": range_stds}
                data, enc_wall, enc_cpu = _timed(lambda: lossless.compress(
                    loaded.model, loaded.family, images, names, batch_size, **options))
                (decoded, _, header), dec_wall, dec_cpu = _timed(lambda: lossless.decompress(
                    loaded.model, loaded.family, data, "measured"))
                rate = lossless.rate(header)
                marginal = rate["marginal_bits"] / dims
                print(f"{loaded.description} n={n} batch {batch_size}"
                      + (f" δ=1/{round(1 / width)} ±{range_stds:g}σ" if width else "")
                      + f": {marginal:.4f} bits/dim marginal ({100 * (marginal - bound) / bound:+.2f}%"
                      f" over the model's {bound:.4f}), file {8 * len(data) / dims:.4f}, initial "
                      f"{rate['initial_bits']:,.0f} bits ({rate['initial_bits'] / 1e4:.1f}/image "
                      f"over 10,000); encode {n / enc_wall:.1f} images/s wall, {n / enc_cpu:.1f} "
                      f"per CPU-s; decode {n / dec_wall:.1f} wall, {n / dec_cpu:.1f} per CPU-s; "
                      f"exact {bool(torch.equal(decoded, images))}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bins = sub.add_parser("bins")
    bins.add_argument("cell")
    bins.add_argument("--images", type=int, default=200)
    bins.set_defaults(func=cmd_bins)
    codec = sub.add_parser("codec")
    codec.add_argument("models", nargs="+")
    codec.add_argument("--images", type=int, default=200)
    codec.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")],
                       default=[32])
    codec.add_argument("--bin-widths", type=lambda s: [float(v) for v in s.split(",")],
                       default=[bits_back.DEFAULT_BIN_WIDTH])
    codec.add_argument("--range-stds", type=lambda s: [float(v) for v in s.split(",")],
                       default=[bits_back.DEFAULT_RANGE_STDS])
    codec.set_defaults(func=cmd_codec)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
