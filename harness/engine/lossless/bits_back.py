"""Bits-back coding with ANS for a hierarchical VAE (BB-ANS: Townsend et al. 2019, Section 2;
its hierarchical form: HiLLoC, Townsend et al. 2020, Section 3).

One ANS stack (constriction's `AnsCoder`, last in first out) carries the whole file. For each
batch of images x, in order:

1. for each top-down block j in order, *decode* (pop) the latent bins k_j from the stack under
   the discretized posterior q(z_j | x, z_<j), z_<j being the bins already chosen;
2. encode (push) x under p(x | z): the DMoL's 256-entry table per sub-pixel, channel by channel;
3. encode k_L .. k_1 under the discretized priors p(z_j | z_<j).

Decoding runs the steps backwards, batch by batch from the last: pop k_1 .. k_L under the
priors, pop x, then push k back under the posterior, which returns the popped bits. The expected
net growth of the stack per image is the negative ELBO of the discretized model.

Latents are binned in units of the prior (models.coding.latent_bins): bin width δ·σ_p centred on
μ_p, so the prior of every latent is the same quantized N(0, 1/δ²) over the bins, whatever μ_p
and σ_p are, and only the posterior's table depends on the network's floats. Both passes that
need the network's floats are computed the same way on both sides: the prior pass runs the
decoder with the fixed bins (encoder: after popping; decoder: after popping them under the fixed
prior); the posterior pass runs it with the encoder's activations (encoder: popping block by
block; decoder: with the bins already known), each turning bins into z by the same function of
its own prior. One thread, the same batches.

Initial bits: the first batch pops from an empty stack, so the stack starts on a seed of
pseudo-random words (a fixed generator: the decoder regenerates it), as many as the first batch
could pop at most. The seed words the encoder never touched are not stored; those it consumed
are the one-off initial cost (`initial_bits`), the rest of the file is the marginal rate. A batch
pops its images' posterior bits all at once (the posterior of every block depends on x, so no
bits come back before the whole batch is pushed: Bit-Swap's reordering needs a Markov chain of
latents), so the initial cost is the batch size times one image's posterior bits: the batch size
trades throughput against initial bits. At the end of decoding the stack must be exactly the seed
again, a last check that the file decoded as it was encoded.
"""

from __future__ import annotations

import math
from typing import Any

import constriction
import numpy as np
import torch

from harness.engine.lossless.segments import corrupt, from_words, to_words
from models import coding

NAME = "bits-back-ans"
VERSION = 1
PRECISION_BITS = 24  # constriction's default ANS: no symbol costs more than 24 bits
SEED = 20190000  # the seed words' generator (numpy PCG64)
# Bin width δ in prior standard deviations and the bins' reach (μ_p ± R σ_p), chosen by
# scripts/codec_measure.py on fmnist_400k: the rate does not measurably change from δ = 1/64 to
# δ = 1 (simulated and real), each halving of δ adds a bit a latent of initial bits, and every
# bin of the posterior's alphabet keeps at least 2^-24 of its mass in the 24-bit coder, so a
# larger alphabet (2R/δ bins) pops more latents far out in the tails, where the likelihood of x
# suffers. δ = 1/2 keeps a factor of 2 of margin for sharper posteriors.
DEFAULT_BIN_WIDTH = 1.0 / 2
DEFAULT_RANGE_STDS = 8.0


def batches(n_images: int, batch_size: int) -> list[tuple[int, int]]:
    return [(first, min(first + batch_size, n_images)) for first in range(0, n_images, batch_size)]


def seed_words(count: int) -> np.ndarray:
    words = np.random.Generator(np.random.PCG64(SEED)).integers(
        1, 2 ** 32, size=count, dtype=np.uint64).astype(np.uint32)
    return words  # no zero word: the stack's top word must be nonzero


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.reshape(-1).contiguous().numpy()


class BitsBackCodec:
    """Codec of a family with `models.coding.TOP_DOWN_LATENTS`."""

    name, version = NAME, VERSION
    capability = coding.TOP_DOWN_LATENTS
    # The initial bits are the batch size times one image's posterior bits: 1 keeps them at
    # the minimum, for about 2/3 of batch 8's throughput (scripts/codec_measure.py).
    default_batch_size = 1

    def __init__(self, batch_size: int, bin_width: float = DEFAULT_BIN_WIDTH,
                 range_stds: float = DEFAULT_RANGE_STDS):
        assert batch_size >= 1 and 0 < bin_width <= 1 and range_stds > 0
        self.batch_size, self.bin_width, self.range_stds = batch_size, bin_width, range_stds
        self.max_bin = int(math.ceil(range_stds / bin_width))

    def check(self, model) -> None:
        """ValueError when the model's likelihood cannot code every 8-bit value."""
        if model.config.n_bits != 8:
            raise ValueError(f"a lossless codec needs an 8-bit likelihood; this model's n_bits "
                             f"is {model.config.n_bits} (it never sees the low bits)")

    def parameters(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "bin_width": self.bin_width,
                "range_stds": self.range_stds}

    # -------------------------------------------------------------------- the model's passes

    def _posterior_family(self):
        return constriction.stream.model.QuantizedGaussian(-self.max_bin, self.max_bin)

    def _prior_model(self):
        """The prior of every latent in bin units: N(0, 1/δ²) quantized to the bins -K..K, as a
        fixed table (symbol k + K); one table decodes 5x faster than a QuantizedGaussian."""
        k = np.arange(-self.max_bin, self.max_bin + 1, dtype=np.float64)
        scale = self.bin_width / math.sqrt(2.0)  # (k ± ½) δ / √2: erf's argument
        upper = np.array([math.erf(v) for v in (k + 0.5) * scale])
        lower = np.array([math.erf(v) for v in (k - 0.5) * scale])
        return constriction.stream.model.Categorical(0.5 * (upper - lower), perfect=False)

    def _prior_pass(self, model, bins: list[torch.Tensor]) -> torch.Tensor:
        """DMoL parameters of p(x | z) for fixed bins (N, M(1+3C), H, W)."""
        width = self.bin_width

        def fixed(j, posterior, prior):
            return coding.latent_value(bins[j], prior, width)

        return model.decoder(bins[0].shape[0], None, fixed, posterior_blocks=0)

    def _posterior_pass(self, model, images: torch.Tensor, choose) -> None:
        """Run the decoder on the encoder's activations; `choose(j, (mean, std) in bin units)`
        returns block j's bins (popped, or already known)."""
        width = self.bin_width
        activations = model.encoder(model._network_input(images))

        def chooser(j, posterior, prior):
            bins = choose(j, coding.latent_bins(posterior, prior, width))
            return coding.latent_value(bins, prior, width)

        model.decoder(images.shape[0], activations, chooser, model.config.n_top_down)

    def _pixel_tables(self, params: torch.Tensor, images: torch.Tensor, channel: int):
        channels = images.shape[1]
        table = coding.dmol_table(params, images[:, :channel], channel, channels, torch.float32)
        return table.reshape(-1, coding.N_VALUES).numpy()

    # -------------------------------------------------------------------------- the stack

    def latents_per_image(self, model) -> int:
        config = model.config
        return sum(config.zdim * block.resolution ** 2 for block in model.decoder.dec_blocks)

    def _seed_count(self, model) -> int:
        """Words for the most a batch can pop (24 bits a latent); every later batch finds the
        seed's unconsumed part plus the net bits of the batches before it."""
        return self.batch_size * self.latents_per_image(model) * PRECISION_BITS // 32 + 2

    def encode(self, model, images: torch.Tensor):
        """(segments, layout): one segment (the stack above the untouched seed words) and the
        seed layout the decoder needs."""
        seed = seed_words(self._seed_count(model))
        ans = constriction.stream.stack.AnsCoder(seed.copy())
        q_family, prior_model = self._posterior_family(), self._prior_model()
        categorical = constriction.stream.model.Categorical(perfect=False)
        for first, stop in batches(images.shape[0], self.batch_size):
            batch = images[first:stop].contiguous()
            bins: list[torch.Tensor] = []

            def pop(j, q):
                mean, std = q
                values = ans.decode(q_family, _flat(mean), _flat(std))
                bins.append(torch.from_numpy(values).view(mean.shape))
                return bins[-1]

            self._posterior_pass(model, batch, pop)
            assert ans.num_words() > 2, "the seed ran out: _seed_count is too small"
            params = self._prior_pass(model, bins)
            symbols = np.concatenate([_flat(batch[:, c]) for c in range(batch.shape[1])])
            tables = np.concatenate([self._pixel_tables(params, batch, c)
                                     for c in range(batch.shape[1])])
            ans.encode_reverse(symbols.astype(np.int32), categorical, tables)
            ans.encode_reverse(np.concatenate([_flat(b) for b in bins]) + self.max_bin,
                               prior_model)
        words = ans.get_compressed()
        prefix = _common_prefix(words, seed)
        layout = {"seed_words": int(seed.size), "seed_prefix_words": prefix}
        return [to_words(words[prefix:])], layout

    @staticmethod
    def rate(layout: dict[str, Any], payload_bytes: int) -> dict[str, float]:
        """The payload's one-off initial bits (seed words consumed) and marginal bits (the
        stack's growth above the seed)."""
        seed, prefix = int(layout["seed_words"]), int(layout["seed_prefix_words"])
        return {"initial_bits": 32.0 * (seed - prefix),
                "marginal_bits": 8.0 * payload_bytes - 32.0 * (seed - prefix)}

    def decode(self, model, segments: list[bytes], n_images: int, source: str,
               layout: dict[str, Any]) -> torch.Tensor:
        if len(segments) != 1:
            raise corrupt(source, f"{len(segments)} segments, a bits-back file has one")
        seed = seed_words(int(layout["seed_words"]))
        prefix = int(layout["seed_prefix_words"])
        ans = constriction.stream.stack.AnsCoder(np.concatenate([seed[:prefix],
                                                                 from_words(segments[0])]))
        q_family, prior_model = self._posterior_family(), self._prior_model()
        categorical = constriction.stream.model.Categorical(perfect=False)
        channels, height, width = model.image_shape
        shapes = [(model.config.zdim, b.resolution, b.resolution)
                  for b in model.decoder.dec_blocks]
        decoded = []
        for first, stop in reversed(batches(n_images, self.batch_size)):
            n = stop - first
            sizes = [n * math.prod(s) for s in shapes]
            flat = torch.from_numpy(ans.decode(prior_model, sum(sizes)) - self.max_bin)
            bins = [part.view(n, *s) for part, s in zip(flat.split(sizes), shapes)]
            params = self._prior_pass(model, bins)
            batch = torch.zeros((n, channels, height, width), dtype=torch.uint8)
            for c in range(channels):
                values = ans.decode(categorical, self._pixel_tables(params, batch, c))
                batch[:, c] = torch.from_numpy(values).view(n, height, width).to(torch.uint8)
            means, stds = [], []

            def known(j, q):
                means.append(_flat(q[0]))
                stds.append(_flat(q[1]))
                return bins[j]

            self._posterior_pass(model, batch, known)
            ans.encode_reverse(flat.numpy(), q_family, np.concatenate(means),
                               np.concatenate(stds))
            decoded.append(batch)
        if not np.array_equal(ans.get_compressed(), seed):
            raise corrupt(source, "the stack did not return to its seed")
        return torch.cat(decoded[::-1])


def _common_prefix(words: np.ndarray, seed: np.ndarray) -> int:
    """How many leading words of the final stack are the seed's, untouched."""
    n = min(words.size, seed.size)
    differs = np.flatnonzero(words[:n] != seed[:n])
    return int(differs[0]) if differs.size else n
