"""A domain feature space beside Inception: the hidden features of a small classifier trained on the data set itself.

Inception-2015-12-05 sees an 8x8 or 16x16 grey image upsampled to 299x299: blobs, not the objects it was trained on.
A classifier trained on the data set's own images and labels sees the classes they hold. In its hidden features the
Fréchet distance, KID and the class balance of generated samples are computed exactly as with Inception (the same
`metrics.fid` statistics, distance and reference files); see docs/fid.md "A second feature space".

- `classifier_features(data_config)`: the classifier of a labelled data set, loaded from the cache or trained there
  first (seconds to a minute on a CPU). It is a detector in `metrics.fid`'s sense (`feature_dim`, `__call__(uint8
  images) -> [N, 128]`), so `stats_of_images`, `accumulate_stats`, `scores` and `analysis.quality.sample_fid` take it
  in place of `InceptionDetector`.
- `ClassifierFeatures.class_balance(features, ref_features, ref_stats)`: the total variation between the classes it
  predicts for the samples and for the data, its mean confidence on each, and the Fréchet distance with the samples
  reweighted to the data's class mix, from the already extracted features (the class head runs on them: no second
  pass over the images).

The network: the image scaled to [-1, 1] and flattened, Linear 256, ReLU, Linear 128, ReLU (the 128 features), and a
linear class head. Training: seeded (initialisation and batch order), Adam, a cosine learning rate, EPOCHS passes
over the training images (at least MIN_STEPS steps) on the CPU, so that the same data give the same weights.

The cache: CACHE_ENV/classifiers when that variable is set (else ~/.cache/discodiff/classifiers), one folder per data
set, seed and training recipe, holding config.json (the data set, its options and a sha256 of its images and labels,
the resolution, the classes, the held-out accuracy, the seed, the recipe and the sha256 of the weights) and
classifier.safetensors (never a pickle). A folder whose config.json records other data (the images changed) is
trained again; weights that do not match their recorded sha256 are refused.

What the classifier is trained on: the data set as configured (its `max_images` and image options such as
`resolution` included) with `split`, `xflip` and `use_labels` left out, so a reference of the test split and a run
on the training split share one classifier, and a run that ignores the labels still gets it. Its accuracy is
measured on held-out images: the test split for mnist and fashion-mnist, else a seeded tenth of the images (which
the classifier then does not train on).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_tensors, save_tensors
from ..config import DataConfig
from ..data import load_dataset, to_uint8
from ..errors import CheckpointError, FIDError
from ..fileio import file_sha256, write_json
from .fid import as_uint8_nchw

FORMAT = 1  # bump when the network, the input scaling or the training recipe changes
FEATURE_SPACE = "classifier"
HIDDEN = (256, 128)
EPOCHS = 10
MIN_STEPS = 2000
BATCH = 256
LR = 2e-3
SEED = 0
DROPPED_OPTIONS = ("split", "xflip", "use_labels")
HELD_OUT_SPLIT = {"fashion-mnist": "test", "mnist": "test"}
HELD_OUT_FRACTION = 0.1
CACHE_ENV = "DISCODIFF_CACHE_DIR"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "classifier.safetensors"
LABELLED = "digits, mnist, fashion-mnist, or a folder / zip whose dataset.json gives labels"


# ---- the network --------------------------------------------------------------------------------------------

class MLPClassifier(nn.Module):
    """[N, C, H, W] in [-1, 1] -> `features` (the last hidden layer, after its ReLU) -> `head` (class logits)."""

    def __init__(self, input_shape, classes: int, hidden=HIDDEN):
        super().__init__()
        layers, width = [nn.Flatten()], math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.features(x))


def to_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 in [-1, 1], as the data sets map their pixels (x / 127.5 - 1)."""
    return images_uint8.float() / 127.5 - 1


# ---- the data it is trained on -------------------------------------------------------------------------------

def classifier_data(cfg: DataConfig) -> DataConfig:
    """The data set whose classifier serves `cfg`: its name, resolved path and options, less DROPPED_OPTIONS."""
    options = {k: v for k, v in sorted((cfg.options or {}).items()) if k not in DROPPED_OPTIONS}
    path = str(Path(cfg.path).expanduser().resolve()) if cfg.path else None
    return DataConfig(name=cfg.name, path=path, options=options)


def data_record(cfg: DataConfig) -> dict:
    """{"name", "path", "options"} of `classifier_data(cfg)`: how config.json and reference files name it."""
    c = classifier_data(cfg)
    return {"name": c.name, "path": c.path, "options": dict(c.options)}


def data_label(cfg: DataConfig) -> str:
    c = classifier_data(cfg)
    name = c.path if c.name == "path" else c.name
    options = ",".join(f"{k}={v}" for k, v in c.options.items())
    return f"{name}[{options}]" if options else name


def _images_and_labels(cfg: DataConfig, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N, C, H, W], int64 labels [N]) of `cfg`; FIDError in one line for data without labels."""
    ds = load_dataset(cfg)
    if ds.kind != "image" or ds.stored.ndim != 4:
        raise FIDError(f"{what} is not an image data set (shape {tuple(ds.stored.shape)}); the classifier features "
                       f"need images")
    if ds.labels is None:
        raise FIDError(f"{what} has no class labels, and --features classifier trains its classifier on them "
                       f"({LABELLED}); use --features inception")
    images = ds.pixels if ds.pixels is not None else to_uint8(ds.x)
    return images.contiguous(), ds.labels.long()


def images_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the uint8 images' shape and bytes and of the labels: what the classifier was trained on."""
    h = hashlib.sha256(json.dumps(list(images.shape)).encode())
    h.update(images.numpy().tobytes())
    h.update(labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def recipe(seed: int = SEED, epochs: int = EPOCHS) -> dict:
    return {"format": FORMAT, "architecture": "mlp", "hidden": list(HIDDEN), "epochs": int(epochs),
            "min_steps": MIN_STEPS, "batch": BATCH, "lr": LR, "seed": int(seed)}


def cache_root(cache_dir=None) -> Path:
    """`cache_dir`, else $DISCODIFF_CACHE_DIR/classifiers, else ~/.cache/discodiff/classifiers."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV, "").strip()
    if env and env.lower() not in ("off", "none", "0", "false"):
        return Path(env).expanduser() / "classifiers"
    return Path.home() / ".cache" / "discodiff" / "classifiers"


def folder_name(cfg: DataConfig, seed: int = SEED, epochs: int = EPOCHS) -> str:
    """<readable data set name>-<12 hex digits of a hash of the data set, its options, the seed and the recipe>."""
    key = json.dumps({"data": data_record(cfg), "recipe": recipe(seed, epochs)}, sort_keys=True)
    c = classifier_data(cfg)
    readable = Path(c.path).name if c.name == "path" and c.path else c.name
    readable += "".join(f"-{k}{v}" for k, v in c.options.items())
    readable = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in readable)[:60]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# ---- training ----------------------------------------------------------------------------------------------

def train_classifier(images: torch.Tensor, labels: torch.Tensor, classes: int, *, seed: int = SEED,
                     epochs: int = EPOCHS) -> tuple[MLPClassifier, int]:
    """(the trained MLPClassifier on the CPU, in eval mode; the number of steps) on uint8 `images` [N, C, H, W]."""
    n = len(images)
    steps = max(MIN_STEPS, epochs * math.ceil(n / BATCH))
    with torch.random.fork_rng(devices=[]):  # the initialisation is seeded without touching the caller's RNG
        torch.manual_seed(seed)
        net = MLPClassifier(images.shape[1:], classes)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    order, at = torch.randperm(n, generator=g), 0
    net.train()
    for _ in range(steps):
        if at + BATCH > n:  # a fresh shuffle each pass; every batch is full
            order, at = torch.randperm(n, generator=g), 0
        idx = order[at:at + BATCH]
        at += BATCH
        loss = nn.functional.cross_entropy(net(to_input(images[idx])), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval(), steps


@torch.no_grad()
def accuracy(net: MLPClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 4096) -> float:
    hits = sum(int((net(to_input(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum())
               for i in range(0, len(images), batch))
    return hits / max(len(images), 1)


def _held_out(cfg: DataConfig, images, labels, seed: int):
    """(training images, labels, held-out images, labels, how the held-out set was chosen)."""
    c = classifier_data(cfg)
    if c.name in HELD_OUT_SPLIT:
        options = {k: v for k, v in c.options.items() if k != "max_images"}
        split = HELD_OUT_SPLIT[c.name]
        test_x, test_y = _images_and_labels(DataConfig(name=c.name, path=c.path, options={**options, "split": split}),
                                            f"{c.name} split={split}")
        return images, labels, test_x, test_y, f"the {split} split ({len(test_x)} images)"
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    cut = len(images) - max(1, round(HELD_OUT_FRACTION * len(images)))
    tr, te = order[:cut].sort().values, order[cut:].sort().values
    return (images[tr], labels[tr], images[te], labels[te],
            f"a seeded {HELD_OUT_FRACTION:.0%} of the images ({len(te)}), not trained on")


# ---- the feature detector ----------------------------------------------------------------------------------

class ClassifierFeatures:
    """The classifier as a feature detector: uint8 images [N, C, H, W] or [N, H, W, C] -> float32 [N, 128] on the
    CPU (its last hidden layer). `config` is its config.json; `sha256` that of its weights file (what reference
    files record as the detector's hash); `trained` says whether this call trained it (False: from the cache)."""

    feature_space = FEATURE_SPACE
    backend = FEATURE_SPACE

    def __init__(self, net: MLPClassifier, config: dict, folder: Path | None = None, device="cpu",
                 trained: bool = False):
        self.net = net.to(device).eval()
        self.config = config
        self.folder = folder
        self.device = torch.device(device)
        self.trained = trained
        self.feature_dim = int(config["recipe"]["hidden"][-1])
        self.input_shape = tuple(config["input_shape"])
        self.classes = int(config["classes"])
        self.sha256 = config["weights_sha256"]
        self.source = f"{FEATURE_SPACE} {folder}" if folder is not None else FEATURE_SPACE

    @classmethod
    def load(cls, folder, device="cpu") -> "ClassifierFeatures":
        """The classifier saved in `folder`; refused in one line when its weights are not the ones config.json
        records (sha256) or do not fit the network it describes."""
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            shape, classes, hidden = config["input_shape"], config["classes"], config["recipe"]["hidden"]
            recorded = config["weights_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder / CONFIG_FILE} is not a classifier config ({type(e).__name__}: {e}); "
                                  f"delete {folder} to have it trained again") from None
        weights = folder / WEIGHTS_FILE
        if not weights.is_file() or file_sha256(weights) != recorded:
            raise CheckpointError(f"{weights} is missing or not the file its config.json records (sha256 "
                                  f"{recorded[:12]}...); delete {folder} to have it trained again")
        net = MLPClassifier(shape, classes, hidden)
        tensors = load_tensors(weights)
        try:
            net.load_state_dict(tensors)
        except RuntimeError:
            raise CheckpointError(f"{weights} does not fit the network its config.json describes; delete {folder} "
                                  f"to have it trained again") from None
        return cls(net, config, folder, device)

    def provenance(self) -> dict:
        """What a reference file records of this classifier (besides its sha256, the detector's hash)."""
        c = self.config
        return {"data": c["data"], "weights_sha256": self.sha256, "held_out_accuracy": c["held_out_accuracy"],
                "seed": c["recipe"]["seed"], "epochs": c["recipe"]["epochs"], "format": c["recipe"]["format"],
                "input_shape": c["input_shape"]}

    def _input(self, images) -> torch.Tensor:
        x = as_uint8_nchw(images)
        if tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            raise FIDError(f"the classifier of {self.config['data_label']} takes {c}x{h}x{w} images, got "
                           f"{'x'.join(map(str, x.shape[1:]))}; it measures images of its own data set only")
        return to_input(x.to(self.device))

    def __call__(self, images) -> torch.Tensor:
        with torch.inference_mode():
            return self.net.features(self._input(images)).float().cpu()

    def probabilities(self, features) -> torch.Tensor:
        """Class probabilities [N, classes] from features the detector returned (the class head alone)."""
        with torch.inference_mode():
            f = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(self.device)
            return self.net.head(f).softmax(-1).double().cpu()

    def class_balance(self, features, ref_features, ref_stats=None) -> dict:
        """{"class_tv", "confidence", "data_confidence", "class_frequencies", "data_class_frequencies"}: the total
        variation between the frequencies of the classes predicted for the samples (`features`) and for the data
        (`ref_features`), 0 when they match and 1 - 1/K or more for one class of K balanced ones, and the mean
        probability of the predicted class on each.

        With `ref_stats` (the reference's FIDStats) it adds "fid_class_matched": the Fréchet distance after the
        samples are reweighted so that their predicted classes come in the data's proportions (each sample of class c
        counted data_freq[c] / sample_freq[c] times). What the reweighting removes from "fid" is the part of the
        distance due to the mix of classes; what remains is how the samples differ from the data within classes."""
        from .fid import weighted_fid

        p, q = self.probabilities(features), self.probabilities(ref_features)
        cp = p.argmax(1).numpy()
        fp = np.bincount(cp, minlength=self.classes) / len(p)
        fq = np.bincount(q.argmax(1).numpy(), minlength=self.classes) / len(q)
        out = {"class_tv": float(0.5 * np.abs(fp - fq).sum()), "confidence": float(p.max(1).values.mean()),
               "data_confidence": float(q.max(1).values.mean()), "class_frequencies": fp.tolist(),
               "data_class_frequencies": fq.tolist()}
        if ref_stats is not None:
            out["fid_class_matched"] = weighted_fid(features, ref_stats, (fq / np.where(fp > 0, fp, 1))[cp])
        return out


def classifier_features(cfg: DataConfig, *, cache_dir=None, device="cpu", seed: int = SEED, epochs: int = EPOCHS,
                        retrain: bool = False, notice=print) -> ClassifierFeatures:
    """The classifier of the labelled image data set `cfg` (see the module docstring for what it is trained on):
    from the cache folder when one records the same data (images and labels by sha256), options, seed and recipe,
    else trained on the CPU (seconds to a minute), saved there and returned. `device` is where it then runs.
    Data without labels are refused (FIDError, one line) before any training."""
    data = classifier_data(cfg)
    label = data_label(cfg)
    images, labels = _images_and_labels(data, label)
    fingerprint = images_sha256(images, labels)
    folder = cache_root(cache_dir) / folder_name(cfg, seed, epochs)
    expected = {"data": data_record(cfg), "images_sha256": fingerprint, "recipe": recipe(seed, epochs)}
    if (folder / CONFIG_FILE).is_file() and not retrain:
        clf = ClassifierFeatures.load(folder, device)
        stale = [k for k, v in expected.items() if clf.config.get(k) != v]
        if not stale:
            notice(f"using the classifier of {label} in {folder} (held-out accuracy "
                   f"{clf.config['held_out_accuracy']:.3f})")
            return clf
        notice(f"the classifier in {folder} records other {' and '.join(stale)} than {label} has now: training "
               f"it again")
    classes = int(labels.max()) + 1
    tr_x, tr_y, te_x, te_y, held_out = _held_out(data, images, labels, seed)
    notice(f"training the classifier of {label} on {len(tr_x)} images {tuple(images.shape[1:])}, {classes} classes "
           f"(seed {seed}, once; cached in {folder})")
    t0 = time.perf_counter()
    with torch.inference_mode(False):
        net, steps = train_classifier(tr_x, tr_y, classes, seed=seed, epochs=epochs)
    acc = accuracy(net, te_x, te_y)
    config = {**expected, "data_label": label, "input_shape": list(images.shape[1:]),
              "resolution": list(images.shape[2:]), "classes": classes, "num_train": len(tr_x),
              "held_out": held_out, "held_out_accuracy": acc, "train_accuracy": accuracy(net, tr_x, tr_y),
              "steps": steps, "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(net.state_dict(), folder / WEIGHTS_FILE)
    config["weights_sha256"] = file_sha256(folder / WEIGHTS_FILE)
    write_json(config, folder / CONFIG_FILE)
    notice(f"trained in {config['seconds']:.0f} s: held-out accuracy {acc:.3f} on {held_out}")
    return ClassifierFeatures(net, config, folder, device, trained=True)


def classifier_of_reference(provenance: dict, *, cache_dir=None, device="cpu", notice=print) -> ClassifierFeatures:
    """The classifier a reference file was made with (its provenance names the data set, seed and recipe), from
    the cache or trained again; FIDError in one line for a reference of another feature space."""
    info = provenance.get("classifier") if provenance else None
    if provenance.get("features", "inception") != FEATURE_SPACE or not isinstance(info, dict):
        space = provenance.get("features", "inception") if provenance else "inception (it records nothing)"
        raise FIDError(f"the reference was made in the {space} feature space, not the classifier's: make one with "
                       f"`discodiff fid ref --features classifier`")
    d = info["data"]
    cfg = DataConfig(name=d["name"], path=d.get("path"), options=dict(d.get("options") or {}))
    return classifier_features(cfg, cache_dir=cache_dir, device=device, seed=int(info.get("seed", SEED)),
                               epochs=int(info.get("epochs", EPOCHS)), notice=notice)
