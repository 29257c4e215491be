"""Feature extractors for sample-quality metrics, each named and identified by a SHA-256.

Every sample-quality number depends on the embedding it was measured in, so every extractor
carries `name` and `sha256`, and results record both; compare only rows with equal ones.

* `random_cnn` (the default): a seeded, randomly initialised CNN. Naeem et al. 2020 (Reliable
  Fidelity and Diversity Metrics for Generative Models, Section 5) show that randomly
  initialised embeddings work reasonably well for precision/recall/density/coverage, and the
  embedding needs no labels, no download and no weights file, so it works offline on any
  folder. Definition (`RANDOM_CNN`): pixels x -> x / 127.5 - 1 in [-1, 1]; a one-channel image
  is repeated to three channels (so a grey image and its grey RGB copy embed identically);
  three 3x3 convolutions with stride 2 and padding 1 (3 -> 32 -> 64 -> 128 channels, no bias),
  each followed by ReLU; the feature vector is each layer's spatial mean, concatenated:
  32 + 64 + 128 = 224 dimensions. Weights are He-normal, N(0, 2 / fan_in), drawn with
  `numpy.random.RandomState(RANDOM_CNN_SEED).standard_normal` layer by layer in (out, in, kh, kw)
  order: numpy's legacy generator is frozen, so the weights (and the SHA-256 over definition and
  weights) are the same on every machine and version. Images must be at least 8x8 (three halvings
  leave a 1x1 map); features depend on the image size, so compare like sizes only.
* `inception`: the standard FID network (Heusel et al. 2017; TensorFlow's 2015-12-05 Inception
  v3, pool3 features, 2048-d) from the user's weights file `pt_inception-2015-12-05-6726825d.pth`,
  run by torch-fidelity's `FeatureExtractorInceptionV3` (TensorFlow-compatible bilinear resize to
  299x299, as published FIDs use). The file is read once, checked with
  `torch.load(weights_only=True)`, hashed, and torch-fidelity is handed those same bytes, never a
  path of its own, so it can neither download nor unpickle anything else.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UserError, unknown_name_error

RANDOM_CNN_SEED = 2020  # the year of Naeem et al.; any fixed value would do
RANDOM_CNN = {
    "name": "random_cnn",
    "input": "x / 127.5 - 1; 1 channel repeated to 3",
    "layers": "conv3x3 stride 2 pad 1 no bias + ReLU, channels 3-32-64-128",
    "features": "spatial mean of each layer's output, concatenated (224)",
    "init": "He normal N(0, 2/fan_in), numpy RandomState(seed).standard_normal, layer order",
    "seed": RANDOM_CNN_SEED,
}
RANDOM_CNN_WIDTHS = (32, 64, 128)
MIN_IMAGE_SIZE = 8  # pixels: three stride-2 layers leave a 1x1 map
PIXELS_PER_BATCH = 1 << 19  # about 670 images of 28x28; one at a time for 1024x1024

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_HOW_TO_GET = (
    f"download {INCEPTION_FILE} (the FID Inception weights that pytorch-fid and torch-fidelity "
    "use; torch-fidelity calls it weights-inception-2015-12-05-6726825d.pth) from "
    "https://github.com/mseitzer/pytorch-fid/releases/tag/fid_weights and pass its path with "
    "--inception-weights")
EXTRACTORS = ("random_cnn", "inception")
DEFAULT_EXTRACTOR = "random_cnn"


@dataclass(frozen=True, eq=False)
class FeatureExtractor:
    """A frozen embedding: uint8 images (N, C, H, W) -> float32 features (N, dim)."""

    name: str
    sha256: str
    dim: int
    network: nn.Module  # uint8 (B, 3, H, W) -> float32 (B, dim)

    @property
    def identity(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}

    def features(self, images: np.ndarray, images_per_batch: int | None = None) -> np.ndarray:
        """float32 (N, dim) features of uint8 `images` (N, C, H, W), C = 1 or 3, batch by batch.

        Runs under `torch.inference_mode` on the CPU with the caller's thread setting."""
        images = np.asarray(images)
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[1] in (1, 3), \
            (images.dtype, images.shape)
        n, _, height, width = images.shape
        if min(height, width) < MIN_IMAGE_SIZE:
            raise UserError(f"images are {height}x{width}; feature extractor '{self.name}' "
                            f"needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
        batch = images_per_batch or max(1, PIXELS_PER_BATCH // (height * width))
        out = np.empty((n, self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, batch):
                x = torch.from_numpy(images[start:start + batch])  # uint8 (B, C, H, W)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                out[start:start + len(x)] = self.network(x).float().numpy()
        return out


class RandomCNN(nn.Module):
    """The `random_cnn` network (module docstring): uint8 (B, 3, H, W) -> (B, 224)."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        x = x.contiguous(memory_format=torch.channels_last)  # 1.1-1.4x faster convolutions
        pooled = []
        for weight in self.weights:
            x = F.relu(F.conv2d(x, weight, stride=2, padding=1))  # (B, width, H/2, W/2)
            pooled.append(x.mean(dim=(2, 3)))  # (B, width)
        return torch.cat(pooled, dim=1)  # (B, 224)


def random_cnn_weights(seed: int = RANDOM_CNN_SEED) -> list[np.ndarray]:
    """float32 (out, in, 3, 3) He-normal weights of each layer, from numpy's frozen generator."""
    state = np.random.RandomState(seed)
    weights, channels_in = [], 3
    for width in RANDOM_CNN_WIDTHS:
        fan_in = channels_in * 9
        weights.append((state.standard_normal((width, channels_in, 3, 3))
                        * np.sqrt(2.0 / fan_in)).astype(np.float32))
        channels_in = width
    return weights


def random_cnn() -> FeatureExtractor:
    weights = random_cnn_weights()
    digest = hashlib.sha256(json.dumps(RANDOM_CNN, sort_keys=True).encode())
    for weight in weights:
        digest.update(np.ascontiguousarray(weight, dtype="<f4").tobytes())
    network = RandomCNN([torch.from_numpy(w) for w in weights]).eval()
    return FeatureExtractor("random_cnn", digest.hexdigest(), sum(RANDOM_CNN_WIDTHS), network)


class _InceptionPool3(nn.Module):
    """torch-fidelity's FID Inception as uint8 (B, 3, H, W) -> pool3 features (B, 2048)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)[0]  # it resizes to 299x299 itself


def inception(weights_path: str | Path | None) -> FeatureExtractor:
    """The FID Inception from the user's weights file; a UserError saying where to get it."""
    if weights_path is None:
        raise UserError(f"feature extractor 'inception' needs its weights file: "
                        f"{INCEPTION_HOW_TO_GET}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such weights file; {INCEPTION_HOW_TO_GET}")
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure: a corrupt file or a non-tensor pickle
        raise UserError(f"{path}: not a PyTorch weights file that loads with weights_only=True "
                        f"({type(error).__name__}); {INCEPTION_HOW_TO_GET}") from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if not isinstance(fc, torch.Tensor) or tuple(fc.shape) != (1008, 2048):
        raise UserError(f"{path}: not the FID Inception weights (no fc.weight of shape "
                        f"(1008, 2048)); {INCEPTION_HOW_TO_GET}")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as error:
        raise UserError(f"feature extractor 'inception' runs on torch-fidelity, which does not "
                        f"import here ({error}); pip install torch-fidelity (it needs a "
                        "torchvision built for this torch)") from None
    try:
        # The bytes checked above, never the path: torch-fidelity's own loader unpickles freely.
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=io.BytesIO(data))
    except RuntimeError as error:  # load_state_dict: missing / unexpected keys or shapes
        first = str(error).splitlines()[0]
        raise UserError(f"{path}: does not fit the FID Inception network ({first}); "
                        f"{INCEPTION_HOW_TO_GET}") from None
    sha256 = hashlib.sha256(data).hexdigest()
    return FeatureExtractor("inception", sha256, 2048, _InceptionPool3(network).eval())


def get_extractor(name: str = DEFAULT_EXTRACTOR,
                  inception_weights: str | Path | None = None) -> FeatureExtractor:
    """The extractor called `name` (one of EXTRACTORS); a UserError for an unknown name."""
    if name == "random_cnn":
        return random_cnn()
    if name == "inception":
        return inception(inception_weights)
    raise unknown_name_error("feature extractor", name, EXTRACTORS)
