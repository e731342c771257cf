import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
    return {"model": {"network": {"hidden": 32, "emb_dim": 16}, "encoder": {"hidden": 32},
                      "prior": {"depth": 1, "width": 32, "heads": 2}},
            "train": {"kimg": 2, "batch": 64, "tick_kimg": 1, "snapshot_ticks": 1, "state_ticks": 1},
            "prior_train": {"kimg": 1, "batch": 64, "tick_kimg": 0.5}}

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # two workers on two cores: one thread each


def run_cli(args, capsys):
    """Runs `discodiff ARGS` in-process: (exit status, stdout, stderr)."""
    import pytest as _pytest

    from discodiff.cli import main
    with _pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err
