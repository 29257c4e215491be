"""Lossless codecs from the models (harness/engine/lossless): bit-exact round trips, rates at
the models' bits/dim, refusal of a wrong model, a truncated or corrupted file, and the same
bytes decoded in another process."""

from __future__ import annotations

import dataclasses
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.engine import lossless
from harness.engine.lossless import container
from harness.engine.lossless.rows import codec_rows
from harness.errors import UserError
from models import coding, registry
from models.likelihoods import nats_to_bits

FASHION_MNIST_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
REPO = Path(__file__).resolve().parents[1]


def latent_family():
    """The VDVAE family with the bits-back capability (models/vdvae.py declares it once the
    lead adds it to its registration; the codec reads capabilities only)."""
    family = registry.get("vdvae")
    if family.can(coding.TOP_DOWN_LATENTS):
        return family
    return dataclasses.replace(family, capabilities=family.capabilities
                               | {coding.TOP_DOWN_LATENTS})


def build(family, preset, **fields):
    torch.manual_seed(0)
    return family.build_model(family.build_config(preset, **fields)).eval()


def fashion_mnist(n: int) -> torch.Tensor:
    if not FASHION_MNIST_TEST.is_file():
        pytest.skip(f"{FASHION_MNIST_TEST} not installed (apt-get install dataset-fashion-mnist)")
    with gzip.open(FASHION_MNIST_TEST) as f:
        data = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    return torch.from_numpy(data[:n * 784].reshape(n, 1, 28, 28).copy())


def names(n):
    return [f"{i:03d}" for i in range(n)]


def nll_bits(model, images) -> float:
    """The model's loss on the images, in bits per image summed over the set."""
    with torch.no_grad():
        nats = model.loss(images)["loss_nats_per_dim"].double()
    return float(nats_to_bits(nats).sum()) * images[0].numel()


# ---------------------------------------------------------------- round trips and rates


@pytest.mark.parametrize("output", ["softmax", "dmol"])
def test_pixelcnn_round_trip_is_exact_and_costs_its_nll(output):
    family = registry.get("pixelcnn")
    model = build(family, "tiny", output=output)  # 8×8 RGB: channels coded one by one
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    data = lossless.compress(model, family, images, names(7), batch_size=3)
    decoded, got_names, header = lossless.decompress(model, family, data, "f.bin")
    stats = lossless.rate(header)
    assert torch.equal(decoded, images) and got_names == names(7)
    assert header["codec"] == "range-autoregressive" and header["segment_bytes"].__len__() == 3
    nll = nll_bits(model, images)
    # a few bytes of range-coder flush per batch (segment), nothing per image
    assert nll <= stats["marginal_bits"] <= 1.001 * nll + 3 * 64, (stats, nll)
    assert stats["initial_bits"] == 0


def test_pixelcnn_real_images_within_one_percent_of_nll():
    family = registry.get("pixelcnn")
    model = build(family, "cpu_mnist")  # 28×28 grey
    images = fashion_mnist(4)
    data = lossless.compress(model, family, images, names(4), batch_size=4)
    decoded, _, header = lossless.decompress(model, family, data, "f.bin")
    stats = lossless.rate(header)
    assert torch.equal(decoded, images)
    nll = nll_bits(model, images)
    assert abs(stats["marginal_bits"] - nll) <= 0.01 * nll, (stats, nll)


@pytest.mark.parametrize("channels", [1, 3])
def test_vdvae_bits_back_round_trip_is_exact(channels):
    family = latent_family()
    model = build(family, "fmnist_tiny", image_channels=channels)
    images = torch.randint(0, 256, (6, channels, 28, 28), dtype=torch.uint8)
    data = lossless.compress(model, family, images, names(6), batch_size=4)
    decoded, _, header = lossless.decompress(model, family, data, "f.bin")
    stats = lossless.rate(header)
    assert torch.equal(decoded, images)
    assert header["codec"] == "bits-back-ans"
    assert stats["initial_bits"] > 0


def test_vdvae_marginal_rate_is_its_negative_elbo_on_real_images():
    """The bits-back rate of the discretized model is the negative ELBO: one posterior sample
    per image on both sides, so the bound is statistical: within 3% over 12 images here."""
    family = latent_family()
    model = build(family, "fmnist_tiny")
    images = fashion_mnist(12)
    data = lossless.compress(model, family, images, names(12), batch_size=4)
    decoded, _, header = lossless.decompress(model, family, data, "f.bin")
    stats = lossless.rate(header)
    assert torch.equal(decoded, images)
    elbo = nll_bits(model, images)
    assert abs(stats["marginal_bits"] - elbo) <= 0.03 * elbo, (stats, elbo)
    # the file is the marginal rate plus the initial bits, the header and the checksum
    assert 8 * len(data) >= stats["marginal_bits"] + stats["initial_bits"]


def test_initial_bits_grow_with_the_batch_the_marginal_rate_does_not():
    """A batch pops all its images' posterior bits before it pushes anything back, so the seed
    it consumes is about batch size × one image's posterior bits."""
    family = latent_family()
    model = build(family, "fmnist_tiny")
    images = fashion_mnist(6)
    rates = {}
    for batch_size in (1, 3):
        data = lossless.compress(model, family, images, names(6), batch_size=batch_size)
        rates[batch_size] = lossless.rate(container.unpack(data, "f")[0])
    assert 2.4 < rates[3]["initial_bits"] / rates[1]["initial_bits"] < 3.6, rates
    assert rates[3]["marginal_bits"] == pytest.approx(rates[1]["marginal_bits"], rel=0.03)


# ---------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def pixel_file():
    family = registry.get("pixelcnn")
    model = build(family, "tiny")
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    data = lossless.compress(model, family, images, names(3), batch_size=2)
    return family, model, data


def refusal(model, family, data) -> str:
    with pytest.raises(UserError) as caught:
        lossless.decompress(model, family, data, "f.bin")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("f.bin")
    return message


def test_wrong_model_is_refused(pixel_file):
    family, model, data = pixel_file
    other = build(family, "tiny")
    with torch.no_grad():
        other.head.out.bias.add_(1e-3)
    assert "compressed with model sha256" in refusal(other, family, data)


@pytest.mark.parametrize("keep", [0, 5, 10, 40, -33, -1])
def test_truncated_file_is_refused(pixel_file, keep):
    family, model, data = pixel_file
    assert "truncated" in refusal(model, family, data[:keep])


@pytest.mark.parametrize("where", ["header", "payload", "checksum"])
def test_corrupted_file_is_refused(pixel_file, where):
    family, model, data = pixel_file
    header_end = 12 + int.from_bytes(data[8:12], "little")
    index = {"header": 30, "payload": header_end + 3, "checksum": len(data) - 2}[where]
    damaged = bytearray(data)
    damaged[index] ^= 0x10
    assert "corrupted" in refusal(model, family, bytes(damaged))


def test_not_a_compressed_file_is_refused(pixel_file):
    family, model, _ = pixel_file
    assert "wrong magic" in refusal(model, family, b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_file_from_another_machine_kind_is_refused(pixel_file):
    family, model, data = pixel_file
    header, segments = container.unpack(data, "f.bin")
    header["environment"] = {**header["environment"], "cpu": "Some Other CPU"}
    del header["segment_bytes"]
    message = refusal(model, family, container.pack(header, segments))
    assert "Some Other CPU" in message and "where it was made" in message


@pytest.mark.parametrize("edit", [
    lambda h: h.update(codec_parameters={"batch_size": "x", "unknown": 1}),
    lambda h: h.update(names=[]),
    lambda h: h.pop("codec_layout"),
    lambda h: h.update(codec="gzip")])
def test_header_with_bad_codec_settings_is_refused(pixel_file, edit):
    """A header rewritten behind a valid checksum still gets one line, not a traceback."""
    family, model, data = pixel_file
    header, segments = container.unpack(data, "f.bin")
    edit(header)
    del header["segment_bytes"]
    message = refusal(model, family, container.pack(header, segments))
    assert "does not decode" in message or "not one this harness decodes" in message


def test_bits_back_payload_that_does_not_decode_is_refused():
    """A payload altered behind a valid checksum (a forged file): the stack does not return to
    its seed, and the decoder says so instead of returning the images it got."""
    family = latent_family()
    model = build(family, "fmnist_tiny")
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    data = lossless.compress(model, family, images, names(2), batch_size=2)
    header, segments = container.unpack(data, "f.bin")
    words = bytearray(segments[0])
    words[len(words) // 2] ^= 0x01
    del header["segment_bytes"]
    message = refusal(model, family, container.pack(header, [bytes(words)]))
    assert "does not decode" in message


# ---------------------------------------------------------------- choice and rows


def test_codec_is_chosen_by_capability_not_name():
    pixelcnn = registry.get("pixelcnn")
    assert lossless.codec_for(pixelcnn, 4).name == "range-autoregressive"
    assert lossless.codec_for(latent_family(), 4).name == "bits-back-ans"
    renamed = dataclasses.replace(pixelcnn, name="anything")
    assert lossless.codec_for(renamed, 4).name == "range-autoregressive"
    # default batches: range coding shares the cached loop's overhead, bits-back keeps the
    # initial bits at one image's posterior bits
    assert lossless.codec_for(pixelcnn).batch_size == 32
    assert lossless.codec_for(latent_family()).batch_size == 1
    stripped = dataclasses.replace(pixelcnn, capabilities=frozenset())
    with pytest.raises(ValueError, match="declares no capability"):
        lossless.codec_for(stripped, 4)


def test_codec_rows():
    family = latent_family()
    model = build(family, "fmnist_tiny")
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    rows = codec_rows(model, family, images, batch_size=2)
    by = {(r["metric"], r.get("amortized_over")): r for r in rows}
    assert all(r["codec"] == "bits-back-ans" and r["n_images"] == 3 for r in rows)
    assert not any(r["metric"].startswith("test_") for r in rows)
    assert by[("codec_roundtrip_exact", None)]["value"] == 1.0
    initial = by[("codec_initial_bits", None)]["value"]
    assert initial > 0
    assert by[("codec_initial_bits_per_image", 3)]["value"] == pytest.approx(initial / 3)
    assert by[("codec_initial_bits_per_image", 10000)]["value"] == pytest.approx(initial / 1e4)
    codec, bound = by[("codec_bits_per_dim", None)]["value"], by[("model_bits_per_dim", None)]["value"]
    assert by[("codec_overhead_percent", None)]["value"] == pytest.approx(
        100 * (codec - bound) / bound)
    assert by[("codec_file_bits_per_dim", None)]["value"] > codec
    assert by[("codec_decode_images_per_s", None)]["value"] > 0


def test_codec_rows_report_a_failed_round_trip(monkeypatch):
    family = registry.get("pixelcnn")
    model = build(family, "tiny")
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    real = lossless.decompress

    def off_by_one(*args, **kwargs):
        decoded, got, header = real(*args, **kwargs)
        decoded[0, 0, 0, 0] ^= 1
        return decoded, got, header

    monkeypatch.setattr(lossless, "decompress", off_by_one)
    rows = codec_rows(model, family, images, batch_size=2)
    assert [r["value"] for r in rows if r["metric"] == "codec_roundtrip_exact"] == [0.0]


# ---------------------------------------------------------------- across processes


def test_round_trip_across_processes(tmp_path):
    """Compressed in one process, decompressed in another: the same bytes, the same images."""
    specs = {"pixelcnn:tiny": (5, 3, 8, 8), "vdvae:fmnist_tiny": (5, 1, 28, 28)}
    originals = {}
    for spec, shape in specs.items():
        family_name, preset = spec.split(":")
        family = registry.get(family_name)
        torch.manual_seed(3)
        model = family.build_model(family.build_config(preset))
        torch.save(model.state_dict(), tmp_path / f"{family_name}.pt")
        originals[family_name] = torch.randint(0, 256, shape, dtype=torch.uint8).numpy()
        np.save(tmp_path / f"{family_name}.npy", originals[family_name])
    worker = [sys.executable, str(REPO / "tests" / "lossless_worker.py")]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    for action in ("encode", "decode"):
        subprocess.run(worker + [action, str(tmp_path), *specs], check=True, env=env,
                       timeout=600)
    for family_name, images in originals.items():
        assert np.array_equal(np.load(tmp_path / f"{family_name}.out.npy"), images)
