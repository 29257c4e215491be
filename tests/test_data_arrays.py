"""Large-set formats (memory-mapped npy, npz converted once, PNG folders) and `LazyImages`."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from data_fixtures import (data_root, decode_index, encode_index, encode_index_nhwc,  # noqa: F401
                           write_png, write_png_folder)

from harness.data import LazyImages, load_dataset
from harness.data.lazy import ArraySource
from harness.errors import UserError


def _perm(seed: int, n: int) -> np.ndarray:
    np.random.seed(seed)  # the reference's legacy global generator
    return np.random.permutation(n)


# ---------------------------------------------------------------- LazyImages

@pytest.fixture
def lazy() -> tuple[LazyImages, torch.Tensor]:
    nhwc = encode_index_nhwc(9, 4, 5)
    eager = torch.from_numpy(nhwc).permute(0, 3, 1, 2)  # (9, 3, 4, 5)
    order = np.array([4, 0, 8, 2, 6])
    return LazyImages(ArraySource(nhwc, "NHWC"), order), eager[order]


def test_lazy_images_index_like_a_tensor(lazy):
    images, eager = lazy
    assert images.shape == eager.shape and len(images) == 5 and images.dtype == torch.uint8
    for key in (1, -1, slice(1, 4), slice(None, None, 2), [3, 0], np.array([2, 2]),
                torch.tensor([4, 1])):
        assert torch.equal(images[key], eager[key]), key
    assert images[1:3].is_contiguous()
    assert torch.equal(images.materialize(), eager)
    assert torch.equal(images.subset([2, 0])[:], eager[[2, 0]])
    with pytest.raises(IndexError):
        images[5]
    assert [decode_index(img[None])[0] for img in images] == [4, 0, 8, 2, 6]


def test_memory_mapped_source_reopens_after_pickling(tmp_path):
    np.save(tmp_path / "x.npy", encode_index_nhwc(6, 2, 2))
    array = np.load(tmp_path / "x.npy", mmap_mode="r")
    images = LazyImages(ArraySource(array, "NHWC", tmp_path / "x.npy"), np.array([5, 1]))
    payload = pickle.dumps(images)
    assert len(payload) < 2000  # the mapped pixels are not copied into the pickle
    assert torch.equal(pickle.loads(payload)[:], images[:])


# ---------------------------------------------------------------- ImageNet benchmark

def test_imagenet32_npy_split_and_laziness(data_root):
    folder = data_root / "imagenet32"
    folder.mkdir()
    np.save(folder / "imagenet32-train.npy", encode_index_nhwc(30, 32, 32))
    np.save(folder / "imagenet32-valid.npy", encode_index_nhwc(7, 32, 32))
    splits = load_dataset("imagenet32", validation_size=5)
    perm = _perm(42, 30)
    np.testing.assert_array_equal(decode_index(splits.train[:]), perm[:-5])
    np.testing.assert_array_equal(decode_index(splits.validation[:]), perm[-5:])
    np.testing.assert_array_equal(decode_index(splits.test[:]), np.arange(7))
    assert isinstance(splits.train, LazyImages)
    assert isinstance(splits.train.source._array, np.memmap)  # nothing read yet
    assert splits.image_shape == (3, 32, 32)
    assert splits.provenance["comparable_to_published"] is False  # 7 test images, not 49,999
    assert set(splits.provenance["files"]) == {"imagenet32-train.npy", "imagenet32-valid.npy"}


def test_npy_of_the_wrong_shape_or_truncated_is_a_user_error(data_root):
    folder = data_root / "imagenet64"
    folder.mkdir()
    np.save(folder / "imagenet64-train.npy", encode_index_nhwc(8, 32, 32))  # 32, not 64
    np.save(folder / "imagenet64-valid.npy", encode_index_nhwc(3, 64, 64))
    with pytest.raises(UserError, match=r"imagenet64-train.npy: holds uint8 \(8, 32, 32, 3\), "
                                        r"expected uint8 \(N, 64, 64, 3\)"):
        load_dataset("imagenet64", validation_size=2)
    np.save(folder / "imagenet64-train.npy", encode_index_nhwc(8, 64, 64))
    valid = folder / "imagenet64-valid.npy"
    valid.write_bytes(valid.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"imagenet64-valid.npy: not a readable .npy file or "
                                        "truncated"):
        load_dataset("imagenet64", validation_size=2)


def test_imagenet32_png_folders(data_root):
    write_png_folder(data_root / "imagenet32" / "train_32x32", 8, 32)
    write_png_folder(data_root / "imagenet32" / "valid_32x32", 3, 32)
    splits = load_dataset("imagenet32", validation_size=2)
    np.testing.assert_array_equal(decode_index(splits.validation[:]), _perm(42, 8)[-2:])
    np.testing.assert_array_equal(decode_index(splits.test[:]), np.arange(3))
    assert splits.provenance["row_order"] == "sorted PNG file names"


# ---------------------------------------------------------------- ImageNet npz version

def _write_npz(path, rows: np.ndarray) -> None:
    np.savez(path, data=rows, labels=np.ones(len(rows), dtype=np.int64))


def test_imagenet32_downsampled_is_converted_once_and_flagged(data_root):
    folder = data_root / "imagenet32_downsampled"
    folder.mkdir()
    rows = encode_index(25, (3072,))
    # Batch numbers sort numerically (2 before 10), not as strings.
    _write_npz(folder / "train_data_batch_2.npz", rows[:10])
    _write_npz(folder / "train_data_batch_10.npz", rows[10:])
    _write_npz(folder / "val_data.npz", encode_index(4, (3072,)))
    splits = load_dataset("imagenet32_downsampled", validation_size=5)
    perm = _perm(42, 25)
    np.testing.assert_array_equal(decode_index(splits.train[:]), perm[:-5])
    np.testing.assert_array_equal(decode_index(splits.validation[:]), perm[-5:])
    np.testing.assert_array_equal(decode_index(splits.test[:]), np.arange(4))
    assert splits.provenance["comparable_to_published"] is False
    assert "never compare" in splits.provenance["checksum_note"]
    cache = folder / "cache" / "train.npy"
    stamp = cache.stat().st_mtime_ns
    load_dataset("imagenet32_downsampled", validation_size=5)
    assert cache.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not list((folder / "cache").glob(".*.tmp"))


def test_npz_of_the_wrong_resolution_is_a_user_error(data_root):
    folder = data_root / "imagenet64_downsampled"
    folder.mkdir()
    _write_npz(folder / "train_data_batch_1.npz", encode_index(6, (3072,)))  # 32x32 rows
    _write_npz(folder / "val_data.npz", encode_index(2, (3072,)))
    with pytest.raises(UserError, match=r"train_data_batch_1.npz: 'data' is uint8 \(6, 3072\)"):
        load_dataset("imagenet64_downsampled", validation_size=2)
    assert not (folder / "cache" / "train.npy").exists()


# ---------------------------------------------------------------- FFHQ

def test_ffhq256_npy_split_and_n_bits(data_root):
    folder = data_root / "ffhq256"
    folder.mkdir()
    np.save(folder / "ffhq-256.npy", encode_index_nhwc(12, 256, 256))
    splits = load_dataset("ffhq256", validation_size=4, n_bits=5)
    perm = _perm(5, 12)
    np.testing.assert_array_equal(decode_index(splits.train[:]), perm[:-4])
    np.testing.assert_array_equal(decode_index(splits.validation[:]), perm[-4:])
    assert torch.equal(splits.test[:], splits.validation[:])  # the reference has no test split
    assert splits.n_bits == 5 and splits.provenance["n_bits"] == 5
    assert splits.train[0].dtype == torch.uint8 and int(splits.train[:].max()) > 31  # not requantised
    with pytest.raises(UserError, match=r"n_bits=6 is not one of 8, 5"):
        load_dataset("ffhq256", n_bits=6)


def test_ffhq256_png_folder(data_root):
    write_png_folder(data_root / "ffhq256" / "00000", 5, 256)
    splits = load_dataset("ffhq256", validation_size=2)
    np.testing.assert_array_equal(decode_index(splits.validation[:]), _perm(5, 5)[-2:])


def test_ffhq1024_folders_and_a_wrong_size_image(data_root):
    folder = data_root / "ffhq1024"
    write_png_folder(folder / "train", 2, 1024)
    write_png_folder(folder / "valid", 1, 1024, start=2)
    splits = load_dataset("ffhq1024")
    assert splits.split_sizes == {"train": 2, "validation": 1, "test": 1}
    np.testing.assert_array_equal(decode_index(splits.test[:]), [2])
    write_png(folder / "train" / "00001.png", np.zeros((512, 512, 3), np.uint8))
    with pytest.raises(UserError, match=r"00001.png: image is 512x512 \(WxH\), expected "
                                        r"1024x1024"):
        load_dataset("ffhq1024").train[:]


# ---------------------------------------------------------------- image_folder

def test_image_folder_split_mode_and_sizes(data_root, tmp_path):
    folder = tmp_path / "faces"
    grey = encode_index(10, (6, 6))
    for i in range(10):
        write_png(folder / f"img{i:02d}.png", grey[i])
    splits = load_dataset("image_folder", path=str(folder), validation_size=2, test_size=3,
                          split_seed=9)
    perm = np.random.RandomState(9).permutation(10)
    np.testing.assert_array_equal(decode_index(splits.train[:]), perm[:5])
    np.testing.assert_array_equal(decode_index(splits.validation[:]), perm[5:7])
    np.testing.assert_array_equal(decode_index(splits.test[:]), perm[7:])
    assert splits.image_shape == (1, 6, 6) and splits.provenance["mode"] == "L"
    defaults = load_dataset("image_folder", path=str(folder))
    assert defaults.split_sizes == {"train": 8, "validation": 1, "test": 1}


def test_image_folder_mixed_modes_become_rgb(data_root, tmp_path):
    folder = tmp_path / "mixed"
    write_png(folder / "a.png", np.full((4, 4), 200, np.uint8))
    write_png(folder / "b.png", np.zeros((4, 4, 3), np.uint8))
    from PIL import Image
    Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(folder / "c.jpg")
    splits = load_dataset("image_folder", path=str(folder), validation_size=1, test_size=1)
    assert splits.image_shape == (3, 4, 4) and splits.provenance["mode"] == "RGB"
    everything = torch.cat([splits.train[:], splits.validation[:], splits.test[:]])
    assert sorted(int(img[0, 0, 0]) for img in everything)[-1] == 200  # grey -> RGB kept value


def test_image_folder_wrong_size_names_the_file_unless_resized(data_root, tmp_path):
    folder = tmp_path / "sizes"
    for i in range(4):
        write_png(folder / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    write_png(folder / "odd.png", np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(UserError, match=r"odd.png: image is 10x8 \(WxH\) but 0.png is 8x8; "
                                        ".*image_size"):
        load_dataset("image_folder", path=str(folder), validation_size=1, test_size=1)
    splits = load_dataset("image_folder", path=str(folder), validation_size=1, test_size=1,
                          image_size=[4, 6])
    assert splits.image_shape == (3, 4, 6) and splits.train[:].shape == (3, 3, 4, 6)


def test_image_folder_bad_input(data_root, tmp_path):
    with pytest.raises(UserError, match="has no folder to read"):
        load_dataset("image_folder")
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset("image_folder", path=str(tmp_path / "nope"))
    folder = tmp_path / "broken"
    write_png(folder / "a.png", np.zeros((4, 4), np.uint8))
    (folder / "b.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"b.png: not a readable image"):
        load_dataset("image_folder", path=str(folder))
    with pytest.raises(UserError, match="image_size"):
        load_dataset("image_folder", path=str(folder), image_size=0)
