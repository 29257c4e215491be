"""Downloads against a local http.server on 127.0.0.1 (never the internet): verified before the
final name appears, and a failure leaves nothing behind."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (cifar_archive_bytes, cifar_batches, data_root,  # noqa: F401
                           decode_index, write_idx_dataset)

from harness.cli import main
from harness.data import cifar, idx, load_dataset
from harness.errors import UserError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Truncating(_Quiet):
    """Promises 100,000 bytes, sends 100, hangs up: an interrupted transfer."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + b"x" * 98)
        self.wfile.flush()
        self.close_connection = True


def _serve(handler, directory: Path):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(served folder, base URL); downloads enabled, with a short timeout."""
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("HARNESS_DOWNLOAD", "1")
    from harness.data import download
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)
    http_server, url = _serve(_Quiet, served)
    yield served, url
    http_server.shutdown()
    http_server.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _serve_fashion(served: Path, monkeypatch) -> dict[str, bytes]:
    contents = write_idx_dataset(served, 60, 12)
    monkeypatch.setattr(idx, "FASHION_MNIST_SHA256",
                        {stem: hashlib.sha256(data).hexdigest() for stem, data in contents.items()})
    return contents


def test_missing_files_are_downloaded_and_verified(data_root, server, monkeypatch):
    served, url = server
    _serve_fashion(served, monkeypatch)
    splits = load_dataset("fashion_mnist", validation_size=10, download_url=url)
    target = data_root / "fashion_mnist"
    assert _leftovers(target) == ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]
    assert splits.provenance["checksums_verified"] is True
    assert splits.provenance["source"] == str(target)
    np.testing.assert_array_equal(decode_index(splits.test), np.arange(12))


def test_base_url_from_the_environment(data_root, server, monkeypatch):
    served, url = server
    _serve_fashion(served, monkeypatch)
    monkeypatch.setenv("HARNESS_FASHION_MNIST_URL", url.rstrip("/"))
    assert len(load_dataset("fashion_mnist", validation_size=10).train) == 50


def test_checksum_mismatch_leaves_no_file(data_root, server):
    served, url = server
    write_idx_dataset(served, 60, 12)  # not the real Fashion-MNIST: sha256 differs
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz does not match its "
                                        r"checksum .*nothing was saved"):
        load_dataset("fashion_mnist", download_url=url)
    assert _leftovers(data_root / "fashion_mnist") == []


def test_http_404_leaves_no_file(data_root, server):
    _, url = server
    with pytest.raises(UserError, match=r"could not download http://127.0.0.1:\d+/train-images"):
        load_dataset("mnist", download_url=url)
    assert _leftovers(data_root / "mnist") == []


def test_interrupted_transfer_leaves_no_file(data_root, server, tmp_path):
    truncating, url = _serve(_Truncating, tmp_path)
    try:
        with pytest.raises(UserError, match=r"could not download .* \(connection closed after "
                                            r"100 of 100,000 bytes\)"):
            load_dataset("mnist", download_url=url)
    finally:
        truncating.shutdown()
        truncating.server_close()
    assert _leftovers(data_root / "mnist") == []


def test_mnist_download_is_verified_by_the_archive_md5(data_root, server, monkeypatch):
    served, url = server
    write_idx_dataset(served, 60, 12)
    monkeypatch.setattr(idx, "MNIST_GZ_MD5", {
        p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.glob("*.gz")})
    splits = load_dataset("mnist", validation_size=10, download_url=url)
    assert splits.provenance["checksums_verified"] is True
    assert "md5 of the canonical .gz" in splits.provenance["checksum_note"]


def test_cifar_archive_download(data_root, server, monkeypatch):
    served, url = server
    batches = cifar_batches(4, 3)
    archive = cifar_archive_bytes(batches)
    (served / cifar.ARCHIVE).write_bytes(archive)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(cifar, "BATCH_MD5", {n: hashlib.md5(d).hexdigest()
                                             for n, d in batches.items()})
    splits = load_dataset("cifar10", validation_size=5, download_url=url)
    assert _leftovers(data_root / "cifar10") == [cifar.ARCHIVE]
    assert splits.split_sizes == {"train": 15, "validation": 5, "test": 3}


def test_downloads_can_be_turned_off(data_root, server, monkeypatch):
    served, url = server
    _serve_fashion(served, monkeypatch)
    with pytest.raises(UserError, match="image files not found"):
        load_dataset("fashion_mnist", download=False, download_url=url)
    monkeypatch.setenv("HARNESS_DOWNLOAD", "0")
    with pytest.raises(UserError, match="image files not found"):
        load_dataset("fashion_mnist", download_url=url)
    assert _leftovers(data_root / "fashion_mnist") == []


def test_gunzip_hasher_matches_across_chunk_boundaries():
    from harness.data.download import _GunzipHasher

    payload = bytes(range(256)) * 1000
    blob = gzip.compress(payload) + gzip.compress(b"second member")
    hasher = _GunzipHasher()
    for start in range(0, len(blob), 777):
        hasher.update(blob[start:start + 777])
    assert hasher.hexdigest() == hashlib.sha256(payload + b"second member").hexdigest()


class _Counting(_Quiet):
    requests: list[str] = []

    def do_GET(self):
        _Counting.requests.append(self.path)
        super().do_GET()


def test_a_dry_run_never_downloads(data_root, tmp_path, monkeypatch, capsys):
    served = tmp_path / "served"
    served.mkdir()
    _serve_fashion(served, monkeypatch)
    counting, url = _serve(_Counting, served)
    _Counting.requests = []
    monkeypatch.setenv("HARNESS_DOWNLOAD", "1")
    experiment = tmp_path / "plan_only.yaml"
    experiment.write_text(f"""\
name: plan_only
data: {{dataset: fashion_mnist, options: {{validation_size: 10, download_url: "{url}"}}}}
models:
  vdvae: {{family: vdvae, preset: fmnist_tiny}}
train: {{batch_size: 4, max_steps: 2}}
runner: {{jobs: 1, estimate: flops, flops_per_s: 1.0e+10, report: false}}
""")
    try:
        assert main(["run", str(experiment), "--dry-run", "--results",
                     str(tmp_path / "r")]) == 0
        out = capsys.readouterr().out
        assert _Counting.requests == [] and _leftovers(data_root / "fashion_mnist") == []
        assert "data: dataset 'fashion_mnist': image files not found" in out
        assert "a real run downloads what it can first" in out and "vdvae" in out
        # Outside the dry run the same loader fetches the files from the same server.
        assert len(load_dataset("fashion_mnist", validation_size=10, download_url=url).train) \
            == 50 and _Counting.requests
    finally:
        counting.shutdown()
        counting.server_close()
